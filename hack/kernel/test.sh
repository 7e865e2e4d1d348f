#!/usr/bin/env bash
# test.sh DIR=BINARY[=BUDGET]... : runs several Go test binaries in ONE
# boot of the kernel test bed, one after the other, each in its package
# directory DIR (so testdata/ resolves), with -test.v and a time budget.
# Prints a summary line per binary and exits non-zero if any failed.
#
# Every binary gets BUDGET seconds (default KERNEL_TEST_BUDGET; -test.timeout): one that
# runs over fails on its own, with Go's list of the tests still running and
# a line naming the budget, long before the bed's own timeout, which is set
# to the sum of the budgets plus a margin unless BED_TIMEOUT says otherwise.
#
# Env: KERNEL_TEST_FLAGS (extra flags for every binary, e.g. "-test.run TestX"),
#      KERNEL_TEST_BUDGET (seconds per binary, default 300),
#      KERNEL_TEST_ENV (NAME=VALUE ... exported to the binaries in the guest,
#      e.g. "DIFF_SEED=random": the host's environment does not reach it).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

[[ $# -ge 1 ]] || { echo "usage: $0 DIR=BINARY[=BUDGET]..." >&2; exit 2; }
default_budget=${KERNEL_TEST_BUDGET:-300}
total=0
for pair in "$@"; do
  IFS== read -r _ _ budget <<<"$pair"
  budget=${budget:-$default_budget}
  [[ $budget =~ ^[1-9][0-9]*$ ]] || { echo "kernel-bed: $pair: budget '$budget' is not a number of seconds" >&2; exit 2; }
  total=$((total + budget))
done
export BED_TIMEOUT=${BED_TIMEOUT:-$((total + 120))}
bed_ensure
bed_new_ctl
{
  echo 'failed=""'
  for kv in ${KERNEL_TEST_ENV:-}; do
    [[ $kv == [A-Za-z_]*=* ]] || { echo "kernel-bed: KERNEL_TEST_ENV: '$kv' is not NAME=VALUE" >&2; exit 2; }
    echo "export $(bed_quote "$kv")"
  done
  for pair in "$@"; do
    IFS== read -r dir bin budget <<<"$pair"
    dir=$(realpath -e "$dir"); bin=$(realpath -e "$bin"); budget=${budget:-$default_budget}
    name=${dir#"$PWD"/}
    echo "echo '=== kernel-bed: $name'; read t0 _ </proc/uptime"
    echo "cd $(bed_quote "/host$dir") && $(bed_quote "/host$bin") -test.v -test.timeout=${budget}s ${KERNEL_TEST_FLAGS:-}"
    echo "rc=\$?; read t1 _ </proc/uptime; took=\$(( \${t1%.*} - \${t0%.*} ))"
    echo "over=''; [ \$rc != 0 ] && [ \$took -ge $budget ] && over=': over its budget of $budget s (KERNEL_TEST_BUDGET)'"
    echo "if [ \$rc = 0 ]; then echo \"=== kernel-bed: ok   $name (\$took s)\"; else echo \"=== kernel-bed: FAIL $name (exit \$rc; \$took s\$over)\"; failed=\"\$failed $name\"; fi"
  done
  echo 'if [ -n "$failed" ]; then echo "=== kernel-bed: failed:$failed"; exit 1; fi'
} >"$BED_CTL/cmd.sh"
set +e
bed_boot "$BED_CTL/cmd.sh"
exit $?
