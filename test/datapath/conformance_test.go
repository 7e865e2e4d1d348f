package datapath

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/preflight"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestConformanceReport pins the report a person pastes into a bug
// report, for a netdevsim PF (in_hw reported) and for an mlx5 PF that
// claims hardware enforcement (a mismatch of the selected profile fails
// the run, another profile's does not), and that RecordOffload fails the
// test only in the second case.
func TestConformanceReport(t *testing.T) {
	nsim := SwitchdevInfo{PF: "eth0", Bus: "netdevsim", Device: "netdevsim90", Driver: "netdevsim", DriverVersion: "6.1.172",
		Firmware: "10.20.30", Mode: "switchdev", OldMode: "legacy", NumVFs: 6, HWTCOffload: "off", Wired: true,
		Preflight: preflight.PF{Verdict: preflight.SoftwareOnly, Problems: []preflight.Problem{
			{Verdict: preflight.SoftwareOnly, Reason: "driver netdevsim models a switchdev eswitch but offloads no flower filter (its block callback takes cls_bpf only): every filter runs in software"},
			{Verdict: preflight.SoftwareOnly, Reason: "hw-tc-offload is off on uplink eth0: the kernel offloads none of its filters, they run in software", Fix: "ethtool -K eth0 hw-tc-offload on"},
		}}}
	mlx := SwitchdevInfo{PF: "ens1f0np0", Bus: "pci", Device: "0000:03:00.0", Driver: "mlx5_core", DriverVersion: "6.8.0-45-generic",
		Firmware: "22.39.1002 (MT_0000000359)", Mode: "switchdev", OldMode: "switchdev", NumVFs: 8, OldNumVFs: 8, HWTCOffload: "on",
		Preflight: preflight.PF{Verdict: preflight.Hardware}}
	checks := []OffloadCheck{
		{Dev: "eth4", Port: "the uplink (VF 3)", Profile: "mlx5-6.1", Filters: 63, WantHW: 41, Missing: 41, Reasons: map[string]int{"not offloaded by the device": 41, "skip_hw": 22}},
		{Dev: "eth1", Port: "pod a (VF 0)", Profile: "mlx5-6.1", Filters: 28, InHW: 12, WantHW: 12},
		{Dev: "eth1", Port: "pod a (VF 0)", Profile: "mlx5-6.3", Filters: 28, InHW: 11, WantHW: 12, Missing: 1, Reasons: map[string]int{"not offloaded by the device": 1}},
		{Dev: "eth1", Port: "pod a (VF 0)", Profile: "software", Filters: 23, Reasons: map[string]int{"software profile": 23}},
	}
	for _, tc := range []struct {
		name      string
		info      SwitchdevInfo
		wantFails int // checks that fail the test
	}{
		{"netdevsim", nsim, 0},
		{"mlx5", mlx, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			saved := conf.suites
			t.Cleanup(func() { conf.suites, conf.rows, conf.order, conf.selected, conf.fields = saved, nil, nil, "", nil })
			conf.suites = []*suiteResult{{name: "TestKernelPolicySemantics", status: "pass", duration: 42 * time.Second},
				{name: "TestKernelMakeBeforeBreak", status: "FAIL", duration: 3400 * time.Millisecond}}
			conf.rows, conf.order, conf.fields = nil, nil, nil
			SetSelectedProfile("mlx5-6.1")
			AddReportField("left behind", "nothing")
			fails := 0
			for _, c := range checks {
				rec := &recordingTB{TB: t}
				recordOffload(rec, "TestKernelPolicySemantics/bridge", &tc.info, c)
				fails += rec.errors
			}
			if fails != tc.wantFails {
				t.Errorf("%d checks failed the test, want %d", fails, tc.wantFails)
			}
			var b strings.Builder
			formatReport(&b, &tc.info, "6.1.172")
			path := filepath.Join("testdata", "conformance-report."+tc.name+".txt")
			if *update {
				if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./test/datapath -run TestConformanceReport -update)", err)
			}
			if !bytes.Equal([]byte(b.String()), want) {
				t.Errorf("%s differs (go test ./test/datapath -run TestConformanceReport -update to accept):\n--- got\n%s\n--- want\n%s", path, b.String(), want)
			}
		})
	}
}

// recordingTB counts Errorf calls instead of failing.
type recordingTB struct {
	testing.TB
	errors int
}

func (r *recordingTB) Errorf(string, ...any) { r.errors++ }
func (r *recordingTB) Helper()               {}
