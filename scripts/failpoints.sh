#!/usr/bin/env bash
# Builds or tests axon with its gofail failpoints enabled (docs/failpoints.md).
#   scripts/failpoints.sh build [OUT]   builds OUT (default bin/axon-failpoints)
#   scripts/failpoints.sh test          runs the tests tagged failpoints
# gofail rewrites sources in place, so both run on a temporary copy of the
# tree: the committed code, and any build made from it, keeps the inert
# comments.
set -euo pipefail
GO=${GO:-go}
root=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:-build}
out=${2:-$root/bin/axon-failpoints}
case $out in /*) ;; *) out=$PWD/$out ;; esac
# The directories holding failpoints.
dirs="revision mvcc lease server"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Copy the module without bin/, .git and other build output.
tar -C "$root" --exclude=./bin --exclude=./.git --exclude=./bench-results \
	--exclude=./deploy -cf - . | tar -C "$tmp" -xf -
cd "$tmp"
# shellcheck disable=SC2086
$GO tool gofail enable $dirs
case $cmd in
build)
	mkdir -p "$(dirname "$out")"
	# -trimpath keeps the build cache shared with the real tree's builds.
	$GO build -trimpath -o "$out" ./cmd/axon
	echo "built $out with failpoints in: $dirs"
	;;
test)
	# Several nodes on mock TiKV, and snapshot restore.
	$GO test -trimpath -tags failpoints -count=1 -timeout 20m -v -run 'TestFailpoint' ./server/ ./cmd/axon/
	;;
*)
	echo "usage: $0 build [OUT] | test" >&2
	exit 2
	;;
esac
