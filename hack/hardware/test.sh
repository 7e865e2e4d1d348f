#!/usr/bin/env bash
# test.sh: the conformance run (docs/kernel-test-bed.md, "Conformance run
# on real hardware"). Runs the kernel datapath suites (policy semantics,
# make-before-break, the eswitch-model differential) on the VFs of a
# switchdev PF, checks in_hw per filter after every apply, and prints the
# report (also written to $MNPTC_CONFORMANCE_REPORT).
#
#   hack/hardware/test.sh PF     on this host, as root: PF is the uplink
#                                netdev of an SR-IOV PF whose VFs are all
#                                free (or that has none)
#   hack/hardware/test.sh --bed  in the kernel test bed, against a netdevsim
#                                device (also what no PF does: CI's
#                                make test-hardware)
#
# Env: GO (default go), MNPTC_CONFORMANCE_REPORT (default
#      bin/conformance-report.txt on a host), MNPTC_HARDWARE_VFS (VFs to
#      create on a PF without any, default 6).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/../.."
GO=${GO:-go}
# The bed runs the conformance suites (tcdriver's ConformanceSuites, what
# its test binary runs by default when given a PF) and its own proof of the
# backend.
BED_SUITES='^(TestKernelPolicySemantics|TestKernelMakeBeforeBreak|TestKernelDifferentialBridge|TestSwitchdev.*)$'

pf=${1:-}
if [[ -z $pf ]]; then
  echo "test-hardware: no PF given: the run on real hardware is skipped (on a node with a switchdev NIC, as root: make test-hardware PF=<uplink netdev>); running the same suites against netdevsim in the kernel test bed instead"
  pf=--bed
fi

if [[ $pf == --bed ]]; then
  export KERNEL_TEST_PKGS="./tcdriver ./test/datapath"
  export KERNEL_TEST_BIN=bin/hardware-tests
  export KERNEL_TEST_FLAGS="-test.run '$BED_SUITES'"
  export KERNEL_TEST_ENV="MNPTC_HARDWARE_PF=netdevsim ${KERNEL_TEST_ENV:-}"
  exec hack/kernel/test-all.sh
fi

if ((EUID != 0)); then
  echo "test-hardware: must run as root (it creates VFs, switches the eswitch of $pf and moves VFs into namespaces)" >&2
  exit 2
fi
[[ -e /sys/class/net/$pf ]] || { echo "test-hardware: no netdev $pf on this host" >&2; exit 2; }
out=bin/hardware-tests
mkdir -p "$out"
echo "test-hardware: go test -c -tags kernel ./tcdriver"
CGO_ENABLED=0 "$GO" test -c -tags kernel -o "$out/tcdriver.test" ./tcdriver
report=${MNPTC_CONFORMANCE_REPORT:-$PWD/bin/conformance-report.txt}
cd tcdriver
MNPTC_CONFORMANCE_REPORT=$report exec "../$out/tcdriver.test" -test.v -test.timeout=900s -mnptc.pf="$pf"
