#!/usr/bin/env bash
# run.sh BINARY [ARGS...]: runs BINARY as root inside the kernel test bed (a
# User-Mode Linux kernel with flower, gact, ct, veth, bridge, 8021q, SCTP and
# netdevsim built in), streams its output, and exits with its exit code.
#
# BINARY must be statically linked (CGO_ENABLED=0), e.g. a test binary:
#   CGO_ENABLED=0 go test -c -tags kernel -o tcdriver.test ./tcdriver
#   hack/kernel/run.sh ./tcdriver.test -test.run TestX -test.v
# The host's / is visible read-only in the guest at /host; the working
# directory is /host$PWD, so relative paths (testdata/) work. /tmp is tmpfs.
#
# Exit codes: BINARY's own; 124 the guest timed out (BED_TIMEOUT, default
# 900 s); 125 the guest ended without an exit code (kernel panic, crash).
# Both print the tail of the kernel console. The first run builds the bed
# (see build.sh; 11-20 min), later runs boot in under a second.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

[[ $# -ge 1 ]] || { echo "usage: $0 BINARY [ARGS...]" >&2; exit 2; }
bin=$(realpath -e "$1") || { echo "kernel-bed: no such file: $1" >&2; exit 2; }
shift
bed_ensure
bed_new_ctl
{
  echo "cd $(bed_quote "/host$PWD") || exit 126"
  printf 'exec %s' "$(bed_quote "/host$bin")"
  for a in "$@"; do printf ' %s' "$(bed_quote "$a")"; done
  echo
} >"$BED_CTL/cmd.sh"
set +e
bed_boot "$BED_CTL/cmd.sh"
exit $?
