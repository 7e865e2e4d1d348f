package datapath

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// BedEnv is set to "1" by the kernel test bed's init. It marks a disposable
// kernel in which tests may create bridges, namespaces and TC rules.
const BedEnv = "KERNEL_TEST_BED"

// InBed reports whether the process runs inside the kernel test bed.
func InBed() bool { return os.Getenv(BedEnv) == "1" }

// RequireBed fails t unless it runs inside the kernel test bed. Kernel tests
// rewire the network of the kernel they run on, so they must never run on
// a workstation by accident; they fail rather than skip so that a
// misconfigured run is not mistaken for a passing one.
//
// A run on real hardware (-mnptc.pf or $MNPTC_HARDWARE_PF naming a PF, see
// SwitchdevPF) is the operator's consent to rewire that PF's VFs, and
// nothing else: outside the bed it allows the conformance suites
// (ConformanceSuite, called before RequireBed) and fails every other test.
func RequireBed(t testing.TB) {
	t.Helper()
	if pf := SwitchdevPF(); pf != "" && pf != NetdevsimPF {
		if isConformanceSuite(t) {
			return
		}
		if !InBed() {
			t.Fatalf("%s is not a suite of the conformance run: with a PF (%s) only those run outside the kernel test bed (drop -test.run to run them)", t.Name(), pf)
		}
	}
	if !InBed() {
		t.Fatalf("this test needs the kernel test bed: run it with `make test-kernel` or "+
			"hack/kernel/run.sh (or set %s=1 on a disposable kernel)", BedEnv)
	}
}

// Run runs a command (for example the bed's ip, tc, bridge or devlink),
// fails t with the command's output if it fails, and returns its output.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
