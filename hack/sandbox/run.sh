#!/usr/bin/env bash
# run.sh KUBE_ASSETS GUEST_BINARY ARGS...: runs GUEST_BINARY in the kernel
# test bed with the sandbox's API server on the host.
#
# etcd and kube-apiserver run on the host (in the guest, where every system
# call costs a ptrace round trip, the API server did not become ready in
# four minutes; on the host it takes seconds). This script puts them and the
# bed in a private network namespace of the host with a tap device, the
# guest's eth0 (UML's tuntap transport): nothing is added to the host's own
# network, parallel runs do not collide, and everything goes away with the
# namespace. An argument @KUBE_INFO@ is replaced by the path, as the guest
# sees it, of the file telling how to reach the API server. The guest's exit
# code is returned.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
[[ $# -ge 2 ]] || { echo "usage: $0 KUBE_ASSETS GUEST_BINARY [ARGS...]" >&2; exit 2; }

if [[ -z ${SANDBOX_IN_NETNS:-} ]]; then
  exec env SANDBOX_IN_NETNS=1 unshare --net "$0" "$@"
fi

assets=$1; shift
tap=sbtap0 host_ip=192.168.77.1 guest_cidr=192.168.77.2/24
ip link set lo up
ip tuntap add dev "$tap" mode tap
ip addr add "$host_ip/24" dev "$tap"
ip link set "$tap" up

state=$(mktemp -d "${TMPDIR:-/tmp}/sandbox-kube.XXXXXX")
info=$state/kube.json
kubehost=$repo/bin/sandbox-kubehost
"$kubehost" -dir "$state" -kube-assets "$assets" -ip "$host_ip" -guest-address "$guest_cidr" -info "$info" &
kpid=$!
cleanup() {
  kill -TERM "$kpid" 2>/dev/null || true
  wait "$kpid" 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup EXIT
for _ in $(seq 1 600); do
  [[ -s $info ]] && break
  kill -0 "$kpid" 2>/dev/null || { echo "sandbox: the API server did not start:" >&2; tail -n 30 "$state"/*.log >&2 || true; exit 1; }
  sleep 0.1
done
[[ -s $info ]] || { echo "sandbox: the API server was not ready after 60 s" >&2; exit 1; }

args=()
for a in "$@"; do args+=("${a//@KUBE_INFO@//host$info}"); done
status=0
BED_UML_ARGS="eth0=tuntap,$tap ${BED_UML_ARGS:-}" "$repo/hack/kernel/run.sh" "${args[@]}" || status=$?
exit "$status"
