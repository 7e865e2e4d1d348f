#!/usr/bin/env bash
# make demo: the whole product on this machine, with every real part.
#
# On the host it builds (once; cached under $CACHE_DIR, see docs/demo.md)
#   - the kernel test bed, a User-Mode Linux kernel with flower/ct/veth/bridge
#     (hack/kernel/build.sh; cold 11-20 min),
#   - kube-apiserver and etcd from the Go module proxy (hack/kube/build.sh;
#     cold ~16 min on 2 cores),
#   - the SR-IOV device plugin (hack/tools/sriovdp/build.sh; cold ~4 min),
#   - the demo driver (test/sandbox/demo), statically linked (~30 s),
# then starts etcd + kube-apiserver on the host and boots the bed, attached
# to them by a tap device in a private network namespace (hack/sandbox/run.sh),
# and runs the demo inside it: deploy/ installed, a fake ConnectX-6 Dx with its
# VF <-> representor veth pairs on a bridge, the real device plugin and the
# kubelet simulator, the real agent binary with the DaemonSet's flags and
# its ServiceAccount's token, the pods of docs/examples/00-cluster.yaml, and
# a connectivity matrix measured with real probes before any policy and
# after each example policy. The guest powers off at the end: nothing is
# left running. Warm, it takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
GO=${GO:-go}
BINARY=${BINARY:-bin/multi-networkpolicy-tc}
export CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/multi-networkpolicy-tc}

t0=$SECONDS
phase() { printf '\n\033[1m==> [%4ds] %s\033[0m\n' "$((SECONDS - t0))" "$*"; }

phase "kernel test bed (cached in $CACHE_DIR/kernel; a cold build takes 11-20 min)"
hack/kernel/build.sh >/dev/null
phase "kube-apiserver + etcd (cached in $CACHE_DIR/kube; a cold build takes ~16 min on 2 cores)"
kube_assets=$(GO=$GO hack/kube/build.sh)
phase "SR-IOV device plugin (cached in $CACHE_DIR/sriovdp; a cold build takes ~4 min)"
sriovdp=$(GO=$GO hack/tools/sriovdp/build.sh)
phase "demo driver test/sandbox/demo (static, for the guest) and its host side test/sandbox/kubehost"
mkdir -p bin
CGO_ENABLED=0 "$GO" build -o bin/sandbox-demo ./test/sandbox/demo
CGO_ENABLED=0 "$GO" build -o bin/sandbox-kubehost ./test/sandbox/kubehost
[[ -x $BINARY ]] || CGO_ENABLED=0 "$GO" build -o "$BINARY" ./cmd/multi-networkpolicy-tc
phase "starting kube-apiserver + etcd on the host, booting the kernel test bed and running the demo in it (builds took $((SECONDS - t0)) s)"
status=0
BED_MEM=${BED_MEM:-1024} BED_TIMEOUT=${BED_TIMEOUT:-600} hack/sandbox/run.sh "$kube_assets" bin/sandbox-demo \
  -repo "/host$repo" -dir /tmp/sandbox -kube-info @KUBE_INFO@ \
  -sriovdp "/host$sriovdp" -agent "/host$(realpath "$BINARY")" || status=$?
phase "demo finished with status $status in $((SECONDS - t0)) s; the guest has powered off"
exit "$status"
