#!/usr/bin/env bash
# Starts Axon (Badger, fsync on), a real etcd (embed, fsync on) and the null
# server on free loopback ports, runs `axon bench compare` against all three,
# writes $BENCH_OUT/report.html, results.json and table.txt, then stops
# everything it started. Run through `make bench-compare`; see
# benchmark/README.md for the knobs (BENCH_* variables).
set -euo pipefail
cd "$(dirname "$0")/../.."

GO=${GO:-go}
AXON=${BENCH_AXON_BIN:-bin/axon}
ETCD=bin/axon-bench-etcd
OUT=${BENCH_OUT:-bench-results}
SUITE=${BENCH_SUITE:-standard}
DURATION=${BENCH_DURATION:-10s}
OBJECTS=${BENCH_OBJECTS:-100000}
LIST_OBJECTS=${BENCH_LIST_OBJECTS:-10000}
WATCHERS=${BENCH_WATCHERS:-10000}
WATCH_RATE=${BENCH_WATCH_RATE:-0}
STEPS=${BENCH_STEPS:-}
EXTRA=${BENCH_ARGS:-}

[ -x "$AXON" ] || { echo "bench-compare: $AXON not built (make build)" >&2; exit 1; }
echo "==> building the embedded etcd (benchmark/tools, its own module)"
(cd benchmark/tools && "$GO" build -o "../../$ETCD" ./etcd-embed)

mkdir -p "$OUT"
rm -rf "$OUT/axon-data" "$OUT/etcd-data"
mapfile -t ports < <("$AXON" bench free-ports -n 4)
AXON_PORT=${ports[0]} ETCD_PORT=${ports[1]} ETCD_PEER_PORT=${ports[2]} NULL_PORT=${ports[3]}

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> starting axon (badger, fsync on) on 127.0.0.1:$AXON_PORT"
"$AXON" serve --backend badger --data-dir "$OUT/axon-data" \
	--listen-client-urls "http://127.0.0.1:$AXON_PORT" --log-level warn >"$OUT/axon.log" 2>&1 &
AXON_PID=$!
pids+=("$AXON_PID")

echo "==> starting etcd (embed, fsync on) on 127.0.0.1:$ETCD_PORT"
"$ETCD" --data-dir "$OUT/etcd-data" --listen-client "127.0.0.1:$ETCD_PORT" \
	--listen-peer "127.0.0.1:$ETCD_PEER_PORT" --log-file "$OUT/etcd.log" >"$OUT/etcd.out" 2>&1 &
ETCD_PID=$!
pids+=("$ETCD_PID")

echo "==> starting the null server on 127.0.0.1:$NULL_PORT"
"$AXON" bench null-server --listen "127.0.0.1:$NULL_PORT" >"$OUT/null.log" 2>&1 &
NULL_PID=$!
pids+=("$NULL_PID")

steps=()
[ -n "$STEPS" ] && steps=(--steps "$STEPS")
# shellcheck disable=SC2086 # EXTRA is a list of extra flags
"$AXON" bench compare \
	--target "axon=127.0.0.1:$AXON_PORT,pid=$AXON_PID,data-dir=$OUT/axon-data" \
	--target "etcd=127.0.0.1:$ETCD_PORT,pid=$ETCD_PID,data-dir=$OUT/etcd-data" \
	--target "null=127.0.0.1:$NULL_PORT,pid=$NULL_PID" \
	--suite "$SUITE" --duration "$DURATION" --objects "$OBJECTS" \
	--list-objects "$LIST_OBJECTS" --watchers "$WATCHERS" --watch-rate "$WATCH_RATE" \
	--html "$OUT/report.html" --json "$OUT/results.json" "${steps[@]}" $EXTRA |
	tee "$OUT/table.txt"

for p in "$AXON_PID" "$ETCD_PID" "$NULL_PID"; do
	kill -0 "$p" 2>/dev/null || echo "bench-compare: warning: server pid $p exited during the run (logs in $OUT/)" >&2
done
