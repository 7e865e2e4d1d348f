#!/usr/bin/env bash
# test.sh [-run REGEXP] DIR=BINARY... : runs several Go test binaries in ONE
# boot of the kernel test bed, one after the other, each in its package
# directory DIR (so testdata/ resolves), with -test.v and a timeout.
# Prints a summary line per binary and exits non-zero if any failed.
#
# Env: KERNEL_TEST_FLAGS (extra flags for every binary, e.g. "-test.run TestX"),
#      KERNEL_TEST_TIMEOUT (per binary, Go duration, default 10m).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

[[ $# -ge 1 ]] || { echo "usage: $0 DIR=BINARY..." >&2; exit 2; }
bed_ensure
bed_new_ctl
{
  echo 'failed=""'
  for pair in "$@"; do
    dir=$(realpath -e "${pair%%=*}"); bin=$(realpath -e "${pair#*=}")
    name=${dir#"$PWD"/}
    echo "echo '=== kernel-bed: $name'; read t0 _ </proc/uptime"
    echo "cd $(bed_quote "/host$dir") && $(bed_quote "/host$bin") -test.v -test.timeout=${KERNEL_TEST_TIMEOUT:-10m} ${KERNEL_TEST_FLAGS:-}"
    echo "rc=\$?; read t1 _ </proc/uptime; took=\"\$t0 → \$t1 s guest uptime\""
    echo "if [ \$rc = 0 ]; then echo \"=== kernel-bed: ok   $name (\$took)\"; else echo \"=== kernel-bed: FAIL $name (exit \$rc; \$took)\"; failed=\"\$failed $name\"; fi"
  done
  echo 'if [ -n "$failed" ]; then echo "=== kernel-bed: failed:$failed"; exit 1; fi'
} >"$BED_CTL/cmd.sh"
set +e
bed_boot "$BED_CTL/cmd.sh"
exit $?
