#!/usr/bin/env bash
# End-to-end suite: kube-apiserver's storage tests against Axon (with a real
# etcd as the control), then a real kube-apiserver on Axon under a client-go
# workload. `make e2e` runs this.
#
#   E2E_PROFILE=full|ci   ci: reduced workload sizes (default full)
#   E2E_PARTS=storage,kube  which parts to run (default both)
#   E2E_BACKEND=axon|etcd kube part against Axon (default) or the etcd control
#
# Full logs and data dirs go to deploy/e2e/.work; the console shows the
# summary lines, test results and failures.
set -uo pipefail
cd "$(dirname "$0")"
export E2E_PROFILE=${E2E_PROFILE:-full}
PARTS=${E2E_PARTS:-storage,kube}
GO=${GO:-go}
# -trimpath everywhere: the test builds then share the build cache with the
# kube-apiserver build (same compiled k8s.io packages).
export GOFLAGS="${GOFLAGS:-} -trimpath"

rm -rf .work && mkdir -p .work .bin
export E2E_WORK_DIR=$PWD/.work
export E2E_SUMMARY_FILE=$PWD/.work/summary.txt
: > "$E2E_SUMMARY_FILE"
summary() { echo "E2E SUMMARY $(printf '%-12s' "$1:") $2" | tee -a "$E2E_SUMMARY_FILE"; }

t0=$(date +%s)
status=0

s=$(date +%s)
if ! ./build-kube-apiserver.sh > .work/build-kube-apiserver.log 2>&1; then
	cat .work/build-kube-apiserver.log
	exit 1
fi
(cd ../.. && $GO build -o deploy/e2e/.bin/axon ./cmd/axon) || exit 1
(cd embed-etcd && $GO build -o ../.bin/embed-etcd .) || exit 1
summary build "kube-apiserver $(./.bin/kube-apiserver --version | awk '{print $2}'), axon, embed-etcd built in $(($(date +%s) - s))s (kube-apiserver from cache when unchanged)"
export E2E_AXON_BIN=$PWD/.bin/axon E2E_ETCD_BIN=$PWD/.bin/embed-etcd E2E_KUBE_APISERVER_BIN=$PWD/.bin/kube-apiserver

# Console filter: summaries, results, test log lines; everything goes to the log.
show() { grep --line-buffered -E '^(E2E SUMMARY|--- |    --- (FAIL)|ok |FAIL|PASS$|panic:)|_test\.go:[0-9]+:|^        ' || true; }

run_part() { # name package test timeout
	local s rc
	s=$(date +%s)
	echo "=== e2e part $1 (profile $E2E_PROFILE)"
	$GO test -count=1 -v -timeout "$4" -run "^$3\$" "./$2/" 2>&1 | tee ".work/$1.out" | show
	rc=${PIPESTATUS[0]}
	summary "$1-time" "$(($(date +%s) - s))s (exit $rc; log deploy/e2e/.work/$1.out)"
	[ $rc -eq 0 ] || status=1
}

case ",$PARTS," in *,storage,*) run_part storage storage TestStorageSuite 40m ;; esac
case ",$PARTS," in *,kube,*) run_part kube kube TestKube 60m ;; esac

echo
echo "===== e2e summary (profile $E2E_PROFILE, $(($(date +%s) - t0))s) ====="
cat "$E2E_SUMMARY_FILE"
if [ $status -eq 0 ]; then echo "e2e: PASS"; else echo "e2e: FAIL"; fi
exit $status
