//go:build kernel

package tcdriver

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// The conformance run (docs/kernel-test-bed.md, "Conformance run on real
// hardware"): with -mnptc.pf or $MNPTC_HARDWARE_PF the suites' topologies
// are VFs of a switchdev PF (netdevsim in the bed), every bridge apply is
// followed by an in_hw check per filter against the profile's expectation
// (checkOffload), and the report is printed and written when the binary
// ends.

func TestMain(m *testing.M) {
	datapath.SetSelectedProfile(ProfileForKernel(RunningKernelRelease()).Name)
	code := m.Run()
	path, err := datapath.WriteConformanceReport(os.Stdout)
	switch {
	case err != nil:
		fmt.Fprintln(os.Stderr, err)
		code = 1
	case path != "":
		fmt.Printf("conformance report written to %s\n", path)
	}
	os.Exit(code)
}

// checkOffload reads back every device of br after an apply and records,
// per device, our filters, those in hardware and those the driver's
// profile expects in hardware (datapath.RecordOffload fails t on a PF that
// claims hardware enforcement when the selected profile's expectation is
// not met). Nothing happens on a veth topology.
func checkOffload(t testing.TB, drv *TC, br *Bridge) {
	t.Helper()
	if !datapath.SwitchdevActive() {
		return
	}
	prof := drv.opts.Profile.withDefault()
	// What each device is, when the topology cannot say (datapath knows
	// its own pods by name).
	ports := map[string]string{}
	for _, up := range br.Uplinks {
		ports[up] = "uplink"
	}
	for _, p := range br.Ports {
		ports[p.Dev] = "pod " + p.RuleSet.Attachment.PodName
	}
	for _, dev := range bridgeDevs(br) {
		st, err := drv.Dump(context.Background(), dev)
		if err != nil {
			t.Fatal(err)
		}
		inHW, want := 0, 0
		for _, f := range st.Ours() {
			if f.InHW || f.InHWCount > 0 {
				inHW++
			}
			if ok, _ := prof.Offloads(f); ok {
				want++
			}
		}
		missing, reasons := NotInHardware(st, prof)
		datapath.RecordOffload(t, datapath.OffloadCheck{Dev: dev, Port: ports[dev], Profile: prof.Name,
			Filters: len(st.Ours()), InHW: inHW, WantHW: want, Missing: missing, Reasons: reasons})
	}
}
