# Conformance run (docs/kernel-test-bed.md, "Conformance run on real
# hardware"): the kernel datapath suites on the VFs of a switchdev PF, in_hw
# checked per filter, a report to paste into a bug report.

.PHONY: test-hardware test-hardware-bed

# On this host, as root: make test-hardware PF=<uplink netdev>. Without PF
# the hardware run is skipped, saying so, and the same suites run in the
# kernel test bed against netdevsim (test-hardware-bed): what `make test`
# and CI run.
test-hardware:
	GO=$(GO) hack/hardware/test.sh $(PF)

# The same suites in the kernel test bed against a netdevsim PF (its VFs
# wired to veth pairs), plus the bed's proof that the backend leaves the
# host as it found it and refuses a PF with VFs in use.
test-hardware-bed:
	GO=$(GO) hack/hardware/test.sh --bed

TEST_TARGETS += test-hardware
