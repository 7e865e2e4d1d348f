#!/usr/bin/env bash
# test-all.sh: `make test-kernel`. Finds every package with kernel tests
# (a *_test.go file constrained by `//go:build kernel`), compiles each into a
# static test binary, and runs them all in one boot of the kernel test bed,
# each within its time budget (a `// kernel-test-budget: Ns` line in one of
# its kernel test files, else test.sh's default).
#
# Env: GO (default go), KERNEL_TEST_BIN (where binaries go, default
#      bin/kernel-tests), KERNEL_TEST_PKGS (override discovery, e.g.
#      "./tcdriver"), plus test.sh's KERNEL_TEST_FLAGS/KERNEL_TEST_BUDGET/KERNEL_TEST_ENV.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."
GO=${GO:-go}
out=${KERNEL_TEST_BIN:-bin/kernel-tests}

if [[ -n ${KERNEL_TEST_PKGS:-} ]]; then
  read -r -a pkgs <<<"$KERNEL_TEST_PKGS"
else
  mapfile -t pkgs < <(git ls-files -co --exclude-standard '*_test.go' |
    xargs -r grep -lE '^//go:build .*\bkernel\b' | xargs -r -n1 dirname | sort -u | sed 's|^|./|')
fi
if ((${#pkgs[@]} == 0)); then
  echo "kernel-bed: no packages with //go:build kernel tests"; exit 0
fi

rm -rf "$out" && mkdir -p "$out"
pairs=()
for p in "${pkgs[@]}"; do
  p=${p%/}
  bin="$out/$(tr / _ <<<"${p#./}").test"
  echo "kernel-bed: go test -c -tags kernel $p"
  CGO_ENABLED=0 "$GO" test -c -tags kernel -o "$bin" "$p"
  # A package whose kernel tests are all in an external package still builds;
  # one without any test produces no binary: nothing to run.
  # A package states its time budget in a kernel test file:
  #   // kernel-test-budget: 480s
  budget=$(grep -rhoE '^// kernel-test-budget: [0-9]+s' --include='*_test.go' "$p" | head -n1 | tr -dc 0-9 || true)
  [[ -f $bin ]] && pairs+=("$p=$bin${budget:+=$budget}")
done
((${#pairs[@]})) || { echo "kernel-bed: no test binaries built"; exit 0; }
exec "$here/test.sh" "${pairs[@]}"
