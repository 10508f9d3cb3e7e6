#!/usr/bin/env bash
# Runs the tests that need gofail failpoints compiled in (build tag
# failpoints: several nodes on mock TiKV, snapshot restore) on a temporary
# copy of the tree with the failpoints enabled, as build-failpoints.sh
# builds the binary.
set -euo pipefail
GO=${GO:-go}
root=$(cd "$(dirname "$0")/.." && pwd)
dirs="revision mvcc lease server"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -C "$root" --exclude=./bin --exclude=./.git --exclude=./bench-results \
	--exclude=./deploy -cf - . | tar -C "$tmp" -xf -
cd "$tmp"
# shellcheck disable=SC2086
$GO tool gofail enable $dirs
$GO test -trimpath -tags failpoints -count=1 -timeout 20m -v -run 'TestFailpoint' ./server/ ./cmd/axon/
