#!/usr/bin/env bash
# make demo: render the example policies of docs/examples with the real
# binary, one policy at a time on top of the example cluster, showing what
# each adds. (The full sandbox demo with the kernel test bed, the device
# plugin and a kube-apiserver replaces this once it lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BINARY:-bin/multi-networkpolicy-tc}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "cluster: docs/examples/00-cluster.yaml (namespaces blue and red, NAD blue/sriov-a, 4 pods)"
"$bin" render -f docs/examples/00-cluster.yaml
files=(docs/examples/00-cluster.yaml)
for f in docs/examples/0[1-9]-*.yaml; do
  files+=("$f")
  step "apply $(basename "$f"): $(sed -n 's/^# //p' "$f" | head -1)"
  args=(); for x in "${files[@]}"; do args+=(-f "$x"); done
  "$bin" render "${args[@]}"
done
step "the same rules as tc commands for blue/server (render -o tc)"
"$bin" render "${args[@]}" --pod blue/server -o tc --dev pf0vf0 | head -40
echo "... (render -o tc prints the full pipeline)"
