//go:build kernel

package tcdriver

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// The conformance run (docs/kernel-test-bed.md, "Conformance run on real
// hardware"): with -mnptc.pf or $MNPTC_HARDWARE_PF the suites' topologies
// are VFs of a switchdev PF (netdevsim in the bed), every bridge apply is
// followed by an in_hw check per filter against the profile's expectation
// (checkOffload), and the report is printed and written when the binary
// ends.

// ConformanceSuites are the tests of the conformance run: what runs when
// a PF is given and -test.run is not.
const ConformanceSuites = "^(TestKernelPolicySemantics|TestKernelMakeBeforeBreak|TestKernelDifferentialBridge)$"

func TestMain(m *testing.M) {
	flag.Parse()
	if datapath.SwitchdevPF() != "" && flag.Lookup("test.run").Value.String() == "" {
		_ = flag.Set("test.run", ConformanceSuites)
	}
	datapath.SetSelectedProfile(ProfileForKernel(RunningKernelRelease()).Name)
	// The run must leave the PF as it found it: snapshot before and after
	// (the whole host in the bed, the PF's own netdevs on a node).
	pf, before := datapath.SwitchdevPF(), ""
	if pf == datapath.NetdevsimPF {
		pf = ""
	}
	if datapath.SwitchdevPF() != "" {
		var err error
		if before, err = datapath.HostSnapshot(pf); err != nil {
			fmt.Fprintf(os.Stderr, "conformance: snapshot of the host before the run: %v\n", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if datapath.SwitchdevPF() != "" {
		after, err := datapath.HostSnapshot(pf)
		diff := datapath.SnapshotDiff(before, after)
		switch {
		case err != nil:
			datapath.AddReportField("left behind", "unknown: "+err.Error())
			code = 1
		case len(diff) > 0:
			datapath.AddReportField("left behind", "CHANGED (- before, + after):\n      "+strings.Join(diff, "\n      "))
			code = 1
		default:
			datapath.AddReportField("left behind", "nothing (netdevs, masters, qdiscs, filters, VF settings, sriov_numvfs, eswitch mode, namespaces as before)")
		}
	}
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
