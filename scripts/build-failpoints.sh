#!/usr/bin/env bash
# Builds axon with its gofail failpoints enabled (docs/failpoints.md) into
# $1 (default bin/axon-failpoints). gofail rewrites sources in place, so it
# runs on a temporary copy of the tree: the committed code, and any build
# made from it, keeps the inert comments.
set -euo pipefail
GO=${GO:-go}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/bin/axon-failpoints}
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
mkdir -p "$(dirname "$out")"
# -trimpath keeps the build cache shared with the real tree's builds.
$GO build -trimpath -o "$out" ./cmd/axon
echo "built $out with failpoints in: $dirs"
