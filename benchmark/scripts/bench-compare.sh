#!/usr/bin/env bash
# Runs `axon bench compare` against Axon (Badger, fsync on), a real etcd
# (embed, fsync on, its own process) and the null server on free loopback
# ports. compare starts and stops the three servers itself (--server), so it
# knows their pids and can run the scale step on one server at a time and
# time its restart. Writes $BENCH_OUT/report.html, results.json, table.txt
# and the servers' logs. Run through `make bench-compare`; see
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
SCALE_OBJECTS=${BENCH_SCALE_OBJECTS:-1000000}
LIST_OBJECTS=${BENCH_LIST_OBJECTS:-10000}
WATCHERS=${BENCH_WATCHERS:-10000}
WATCH_RATE=${BENCH_WATCH_RATE:-0}
STEPS=${BENCH_STEPS:-}
EXTRA=${BENCH_ARGS:-}

[ -x "$AXON" ] || { echo "bench-compare: $AXON not built (make build)" >&2; exit 1; }
echo "==> building the etcd server (benchmark/tools, its own module)"
(cd benchmark/tools && "$GO" build -o "../../$ETCD" ./etcd-embed)

mkdir -p "$OUT"
rm -rf "$OUT/axon-data" "$OUT/etcd-data" "$OUT"/axon-data-scale-* "$OUT"/etcd-data-scale-*
rm -f "$OUT/axon.log" "$OUT/etcd.log" "$OUT/null.log"
mapfile -t ports < <("$AXON" bench free-ports -n 4)
AXON_PORT=${ports[0]} ETCD_PORT=${ports[1]} ETCD_PEER_PORT=${ports[2]} NULL_PORT=${ports[3]}

echo "==> axon (badger, fsync on) on 127.0.0.1:$AXON_PORT, etcd (fsync on) on 127.0.0.1:$ETCD_PORT, null server on 127.0.0.1:$NULL_PORT"
steps=()
[ -n "$STEPS" ] && steps=(--steps "$STEPS")
# shellcheck disable=SC2086 # EXTRA is a list of extra flags
"$AXON" bench compare \
	--target "axon=127.0.0.1:$AXON_PORT,data-dir=$OUT/axon-data" \
	--server "axon=$AXON serve --backend badger --data-dir {data-dir} --listen-client-urls http://127.0.0.1:$AXON_PORT --log-level warn" \
	--target "etcd=127.0.0.1:$ETCD_PORT,data-dir=$OUT/etcd-data" \
	--server "etcd=$ETCD --data-dir {data-dir} --listen-client 127.0.0.1:$ETCD_PORT --listen-peer 127.0.0.1:$ETCD_PEER_PORT" \
	--target "null=127.0.0.1:$NULL_PORT" \
	--server "null=$AXON bench null-server --listen 127.0.0.1:$NULL_PORT" \
	--server-logs "$OUT" \
	--suite "$SUITE" --duration "$DURATION" --objects "$OBJECTS" --scale-objects "$SCALE_OBJECTS" \
	--list-objects "$LIST_OBJECTS" --watchers "$WATCHERS" --watch-rate "$WATCH_RATE" \
	--html "$OUT/report.html" --json "$OUT/results.json" "${steps[@]}" $EXTRA |
	tee "$OUT/table.txt"
