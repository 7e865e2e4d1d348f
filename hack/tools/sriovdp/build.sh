#!/usr/bin/env bash
# Builds the pinned SR-IOV network device plugin (the version in go.mod
# beside this script) once per go.mod/go.sum content, caches it under
# $CACHE_DIR/sriovdp/<hash>/, and prints the binary's path. A cold build
# takes ~4 minutes on 2 cores; a cached one, no time. A lock keeps parallel
# runs from building twice.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${CACHE_DIR:?CACHE_DIR must be set (the Makefile exports it)}"
pkg=github.com/k8snetworkplumbingwg/sriov-network-device-plugin/cmd/sriovdp
hash=$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)
out=$CACHE_DIR/sriovdp/$hash/sriovdp
mkdir -p "$(dirname "$out")"
exec 9>"$CACHE_DIR/sriovdp/.lock"
flock 9
if [ ! -x "$out" ]; then
	echo "building $pkg into $out (once per go.sum, ~4 min cold)" >&2
	(cd "$here" && GOWORK=off GOFLAGS=-mod=readonly "${GO:-go}" build -buildvcs=false -trimpath -o "$out.tmp" "$pkg")
	mv "$out.tmp" "$out"
fi
echo "$out"
