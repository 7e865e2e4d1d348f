#!/usr/bin/env bash
# Builds the real kube-apiserver and etcd that the integration tests run the
# agent against, from the versions pinned in hack/kube/go.mod (Go module proxy
# only: no prebuilt downloads). The binaries are cached outside the clone under
# $CACHE_DIR/kube/<hash of go.mod+go.sum>, so a second run costs seconds; a
# flock keeps parallel runs (two `make` invocations, CI plus a developer) from
# building the same thing twice or reading a half-written cache.
#
# Prints the directory that holds kube-apiserver and etcd on stdout (use it as
# KUBEBUILDER_ASSETS / TEST_ASSET_DIR). Progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GO=${GO:-go}
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/multi-networkpolicy-tc}

# Kubernetes version stamped into the binary: without it /version answers
# v0.0.0-master+$Format and clients cannot parse the server version.
KUBE_VERSION=$(cd "$here" && GOWORK=off GOFLAGS=-mod=readonly "$GO" list -m -f '{{.Version}}' k8s.io/kubernetes)
major=${KUBE_VERSION#v}; major=${major%%.*}
minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}

pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"

# The key covers every input of the build: the pinned modules and the flags.
key=$({ cat "$here/go.mod" "$here/go.sum"; echo "$ldflags"; } | sha256sum | cut -c1-16)
dest="$CACHE_DIR/kube/$key"
mkdir -p "$CACHE_DIR/kube"

exec 9>"$CACHE_DIR/kube/.lock"
flock 9

if [[ -x "$dest/kube-apiserver" && -x "$dest/etcd" ]]; then
	echo "kube: using cached $KUBE_VERSION binaries in $dest" >&2
	echo "$dest"
	exit 0
fi

echo "kube: building kube-apiserver $KUBE_VERSION and etcd into $dest (cold: ~16 min on 2 cores)" >&2
tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

start=$SECONDS
(
	cd "$here"
	export GOWORK=off CGO_ENABLED=0
	"$GO" build -trimpath -ldflags "$ldflags" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
	"$GO" build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
)
"$tmp/kube-apiserver" --version >&2
"$tmp/etcd" --version >&2
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "kube: built in $((SECONDS - start)) s" >&2
echo "$dest"
