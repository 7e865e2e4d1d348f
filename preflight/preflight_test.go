package preflight_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/preflight"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov/sriovtest"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

const (
	pf0     = "0000:3b:00.0"
	kernel  = "6.1.0-13-amd64"
	bridge0 = "br0"
)

var on = preflight.Feature{Active: true, Changeable: true}

// connectX is a node with the sriovtest ConnectX-6 Dx as a tuned node
// has it: both PFs in switchdev (legacy where the NIC says so), smfs,
// hw-tc-offload on everywhere, PF0's representors on br0 with an FDB
// entry offloaded.
func connectX(t *testing.T, mutate func(*sriovtest.NIC)) *preflight.Fake {
	t.Helper()
	nic := sriovtest.ConnectX6Dx()
	if mutate != nil {
		mutate(&nic)
	}
	root := t.TempDir()
	if err := nic.Write(root); err != nil {
		t.Fatal(err)
	}
	f := preflight.NewFake(filepath.Join(root, "sys"), kernel)
	if err := f.AddVirtual(bridge0, "bridge"); err != nil {
		t.Fatal(err)
	}
	for i, pf := range nic.PFs {
		dl := "pci/" + pf.PCI
		mode := "switchdev"
		if pf.SwitchID == "" {
			mode = "legacy"
		}
		if i == 0 { // PF1: a driver without devlink, unless a test sets it
			f.SetEswitchMode(dl, mode)
		}
		f.SetParam(dl, "flow_steering_mode", "smfs")
		f.SetTCOffload(pf.Uplink, on)
		for _, vf := range pf.VFs {
			if vf.Representor == "" || pf.SwitchID == "" {
				continue
			}
			f.SetTCOffload(vf.Representor, on)
			if i == 0 {
				if err := f.Enslave(vf.Representor, bridge0); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	f.SetOffloadedFDB(bridge0, "ens1f0npf0vf0", 1)
	f.SetOffloadedFDB(bridge0, "veth-other", 5) // another port's: not counted for PF0
	return f
}

func TestInspect(t *testing.T) {
	tests := []struct {
		name  string
		host  func(t *testing.T) *preflight.Fake
		pf    string
		opts  preflight.Options
		want  preflight.Verdict
		fixes []string
		// reasons must each be in one problem's reason, in order.
		reasons []string
		notes   []string
		err     string
		check   func(t *testing.T, p preflight.PF)
	}{
		{
			name:  "ConnectX switchdev, everything on",
			host:  func(t *testing.T) *preflight.Fake { return connectX(t, nil) },
			pf:    pf0,
			want:  preflight.Hardware,
			notes: []string{"bridge offload active: mlx5_core has offloaded 1 FDB entries of br0"},
			check: func(t *testing.T, p preflight.PF) {
				if p.Driver != "mlx5_core" || p.EswitchMode != "switchdev" || p.FlowSteeringMode != "smfs" || p.VFs != 4 ||
					p.Uplink.Netdev != "ens1f0np0" || len(p.Representors) != 4 || p.Bridge != bridge0 || p.BridgeOffload != "active" ||
					p.OffloadedFDB != 1 || p.Devlink != "pci/"+pf0 {
					t.Errorf("facts: %+v", p)
				}
			},
		},
		{
			name: "by uplink netdev name, no FDB entry yet",
			host: func(t *testing.T) *preflight.Fake {
				f := connectX(t, nil)
				f.SetOffloadedFDB(bridge0, "ens1f0npf0vf0", 0)
				return f
			},
			pf:    "ens1f0np0",
			want:  preflight.Hardware,
			notes: []string{"bridge offload expected (mlx5_core, switchdev, Linux 5.14+, representors on br0) but no FDB entry offloaded yet"},
			check: func(t *testing.T, p preflight.PF) {
				if p.PCI != pf0 || p.BridgeOffload != "expected" {
					t.Errorf("pci %q bridge offload %q", p.PCI, p.BridgeOffload)
				}
			},
		},
		{
			name: "hw-tc-offload off on one representor",
			host: func(t *testing.T) *preflight.Fake {
				f := connectX(t, nil)
				f.SetTCOffload("ens1f0npf0vf1", preflight.Feature{Changeable: true})
				return f
			},
			pf:      pf0,
			want:    preflight.SoftwareOnly,
			fixes:   []string{"ethtool -K ens1f0npf0vf1 hw-tc-offload on"},
			reasons: []string{"hw-tc-offload is off on representor ens1f0npf0vf1"},
		},
		{
			name: "hw-tc-offload off on the uplink",
			host: func(t *testing.T) *preflight.Fake {
				f := connectX(t, nil)
				f.SetTCOffload("ens1f0np0", preflight.Feature{Changeable: true})
				return f
			},
			pf:      pf0,
			want:    preflight.SoftwareOnly,
			fixes:   []string{"ethtool -K ens1f0np0 hw-tc-offload on"},
			reasons: []string{"hw-tc-offload is off on uplink ens1f0np0"},
		},
		{
			name: "legacy mode",
			host: func(t *testing.T) *preflight.Fake {
				return connectX(t, func(n *sriovtest.NIC) { n.PFs[0].SwitchID = "" })
			},
			pf:      pf0,
			want:    preflight.CannotEnforce,
			fixes:   []string{"devlink dev eswitch set pci/0000:3b:00.0 mode switchdev"},
			reasons: []string{"eswitch of pci/0000:3b:00.0 is in legacy mode: its VFs have no representors, so the agent has nowhere to install their filters"},
			check: func(t *testing.T, p preflight.PF) {
				if p.EswitchMode != "legacy" || len(p.Representors) != 0 || p.Uplink.Netdev != "ens1f0np0" {
					t.Errorf("facts: %+v", p)
				}
			},
		},
		{
			name: "a VF without representor",
			host: func(t *testing.T) *preflight.Fake {
				return connectX(t, func(n *sriovtest.NIC) { n.PFs[0].VFs[2].Representor = "" })
			},
			pf:      pf0,
			want:    preflight.CannotEnforce,
			fixes:   []string{"echo 0 > /sys/bus/pci/devices/0000:3b:00.0/sriov_numvfs && echo 4 > /sys/bus/pci/devices/0000:3b:00.0/sriov_numvfs"},
			reasons: []string{"VF 2 (0000:3b:00.4) of pci/0000:3b:00.0: no representor"},
		},
		{
			name: "no representors at all",
			host: func(t *testing.T) *preflight.Fake {
				f := connectX(t, nil)
				for i := range 4 {
					if err := f.RemoveNetdev("ens1f0npf0vf" + string(rune('0'+i))); err != nil {
						t.Fatal(err)
					}
				}
				return f
			},
			pf:      pf0,
			want:    preflight.CannotEnforce,
			fixes:   []string{"echo 0 > /sys/bus/pci/devices/0000:3b:00.0/sriov_numvfs && echo 4 > /sys/bus/pci/devices/0000:3b:00.0/sriov_numvfs"},
			reasons: []string{"VFs 0, 1, 2, 3 (0000:3b:00.2, 0000:3b:00.3, 0000:3b:00.4, 0000:3b:00.5) of pci/0000:3b:00.0: no representor"},
			check: func(t *testing.T, p preflight.PF) {
				if len(p.Representors) != 0 || p.Bridge != "" {
					t.Errorf("representors %v bridge %q", p.Representors, p.Bridge)
				}
			},
		},
		{
			name: "netdevsim in switchdev: a model, no flower offload",
			host: func(t *testing.T) *preflight.Fake {
				f := preflight.NewFake(filepath.Join(t.TempDir(), "sys"), kernel)
				if _, err := f.AddNetdevsim(3, 2); err != nil {
					t.Fatal(err)
				}
				for _, n := range []string{"eni3np1", "eni3npf0vf0", "eni3npf0vf1"} {
					f.SetTCOffload(n, on)
				}
				return f
			},
			pf:      "eni3np1",
			want:    preflight.SoftwareOnly,
			reasons: []string{"driver netdevsim models a switchdev eswitch but offloads no flower filter"},
			check: func(t *testing.T, p preflight.PF) {
				if p.Devlink != "netdevsim/netdevsim3" || p.Driver != "netdevsim" || p.EswitchMode != "switchdev" || p.FlowSteeringMode != "n/a" ||
					len(p.Representors) != 2 || p.PCI != "" || p.Label() != "eni3np1" {
					t.Errorf("facts: %+v", p)
				}
			},
		},
		{
			name: "veth: software only",
			host: func(t *testing.T) *preflight.Fake {
				f := preflight.NewFake(filepath.Join(t.TempDir(), "sys"), kernel)
				for _, err := range []error{f.AddVirtual("veth0", "veth"), f.AddVirtual("br9", "bridge"), f.Enslave("veth0", "br9")} {
					if err != nil {
						t.Fatal(err)
					}
				}
				return f
			},
			pf:      "veth0",
			want:    preflight.SoftwareOnly,
			reasons: []string{"veth0 is a veth netdev, not a NIC port: no eswitch offloads its filters"},
			check: func(t *testing.T, p preflight.PF) {
				if p.Driver != "veth" || p.EswitchMode != "n/a" || p.Uplink.HWTCOffload != "off [fixed]" || p.Bridge != "br9" || p.BridgeOffload != "no" {
					t.Errorf("facts: %+v", p)
				}
			},
		},
		{
			name: "kernel older than the oldest profile and than mlx5 bridge offload",
			host: func(t *testing.T) *preflight.Fake {
				f := connectX(t, nil)
				f.SetOffloadedFDB(bridge0, "ens1f0npf0vf0", 0)
				f.Kernel = "5.10.0-28-amd64"
				return f
			},
			pf:      pf0,
			want:    preflight.SoftwareOnly,
			fixes:   []string{"upgrade the kernel to Linux 6.1 or later", "upgrade the kernel to Linux 5.14 or later"},
			reasons: []string{"Linux 5.10.0-28-amd64 is older than 6.1", "mlx5 offloads a Linux bridge from 5.14 on"},
		},
		{
			name:    "profile mlx5-6.3 on a 6.1 kernel",
			host:    func(t *testing.T) *preflight.Fake { return connectX(t, nil) },
			pf:      pf0,
			opts:    preflight.Options{Profile: "mlx5-6.3"},
			want:    preflight.SoftwareOnly,
			fixes:   []string{"--offload-profile=auto"},
			reasons: []string{"--offload-profile=mlx5-6.3 on Linux 6.1.0-13-amd64: mlx5 matches ct_state +new only from 6.3"},
		},
		{
			name:    "skip_hw everywhere",
			host:    func(t *testing.T) *preflight.Fake { return connectX(t, nil) },
			pf:      pf0,
			opts:    preflight.Options{SoftwareFlag: "--tc-offload=skip-hw"},
			want:    preflight.SoftwareOnly,
			fixes:   []string{"--tc-offload=auto"},
			reasons: []string{"--tc-offload=skip-hw installs every filter skip_hw"},
		},
		{
			name: "dmfs is a note, not a problem",
			host: func(t *testing.T) *preflight.Fake {
				f := connectX(t, nil)
				f.SetParam("pci/"+pf0, "flow_steering_mode", "dmfs")
				return f
			},
			pf:    pf0,
			want:  preflight.Hardware,
			notes: []string{"flow_steering_mode is dmfs", "devlink dev param set pci/0000:3b:00.0 name flow_steering_mode value smfs cmode runtime"},
		},
		{
			name: "devlink error names the PF",
			host: func(t *testing.T) *preflight.Fake {
				f := connectX(t, nil)
				f.FailDevlink("pci/"+pf0, syscall.EOPNOTSUPP)
				return f
			},
			pf:      pf0,
			want:    preflight.CannotEnforce,
			reasons: []string{"cannot be inspected: eswitch mode: devlink device pci/0000:3b:00.0: operation not supported"},
			err:     "PF 0000:3b:00.0: eswitch mode: devlink device pci/0000:3b:00.0: operation not supported",
		},
		{
			name: "a driver without devlink",
			host: func(t *testing.T) *preflight.Fake {
				return connectX(t, nil) // PF 0000:3b:00.1 is given no devlink device below
			},
			pf:      "0000:3b:00.1",
			want:    preflight.CannotEnforce,
			reasons: []string{"pci/0000:3b:00.1 (driver mlx5_core) reports no switchdev eswitch (eswitch mode n/a)"},
			notes:   []string{"devlink device pci/0000:3b:00.1: no devlink device (no such device)"},
		},
		{
			name: "a NIC without SR-IOV nor devlink",
			host: func(t *testing.T) *preflight.Fake {
				f := connectX(t, nil)
				if err := os.Remove(filepath.Join(f.Root, "bus/pci/devices/0000:3b:00.1/sriov_numvfs")); err != nil {
					t.Fatal(err)
				}
				return f
			},
			pf:      "0000:3b:00.1",
			want:    preflight.CannotEnforce,
			reasons: []string{"pci/0000:3b:00.1 (driver mlx5_core) has neither SR-IOV VFs nor a switchdev eswitch"},
		},
		{
			name:    "no such PF",
			host:    func(t *testing.T) *preflight.Fake { return connectX(t, nil) },
			pf:      "0000:5e:00.0",
			want:    preflight.CannotEnforce,
			err:     "PF 0000:5e:00.0: PF 0000:5e:00.0: no such PCI device",
			reasons: []string{"cannot be inspected"},
		},
		{
			name:    "a VF is no PF",
			host:    func(t *testing.T) *preflight.Fake { return connectX(t, nil) },
			pf:      "0000:3b:00.3",
			want:    preflight.CannotEnforce,
			err:     "is a VF of PF 0000:3b:00.0: name the PF",
			reasons: []string{"cannot be inspected"},
		},
		{
			name:    "a path is no PF",
			host:    func(t *testing.T) *preflight.Fake { return connectX(t, nil) },
			pf:      "..",
			want:    preflight.CannotEnforce,
			err:     `PF "..": neither a PCI address`,
			reasons: []string{"cannot be inspected"},
		},
		{
			name:    "a representor is no PF",
			host:    func(t *testing.T) *preflight.Fake { return connectX(t, nil) },
			pf:      "ens1f0npf0vf1",
			want:    preflight.CannotEnforce,
			err:     "PF ens1f0npf0vf1: is the VF representor pf0vf1, not a PF",
			reasons: []string{"cannot be inspected"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.ResolveProfile = resolveProfile
			r := preflight.Inspect(context.Background(), tt.host(t), []string{tt.pf}, tt.opts)
			if len(r.PFs) != 1 {
				t.Fatalf("%d PFs, want 1", len(r.PFs))
			}
			p := r.PFs[0]
			if p.Verdict != tt.want || r.Verdict() != tt.want {
				t.Errorf("verdict %q (node %q), want %q; problems %+v", p.Verdict, r.Verdict(), tt.want, p.Problems)
			}
			if tt.want == preflight.Hardware && len(p.Problems) > 0 {
				t.Errorf("problems on a hardware PF: %+v", p.Problems)
			}
			if got := p.Fixes(); !slices.Equal(got, tt.fixes) {
				t.Errorf("fixes %q, want %q", got, tt.fixes)
			}
			i := 0
			for _, pr := range p.Problems {
				if i < len(tt.reasons) && strings.Contains(pr.Reason, tt.reasons[i]) {
					i++
				}
			}
			if i < len(tt.reasons) {
				t.Errorf("no problem says %q; problems %+v", tt.reasons[i], p.Problems)
			}
			for _, n := range tt.notes {
				if !slices.ContainsFunc(p.Notes, func(s string) bool { return strings.Contains(s, n) }) {
					t.Errorf("no note says %q; notes %q", n, p.Notes)
				}
			}
			err := r.Err()
			switch {
			case tt.err == "" && err != nil:
				t.Errorf("error %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Errorf("error %v, want one saying %q", err, tt.err)
			}
			if tt.check != nil {
				tt.check(t, p)
			}
		})
	}
}

func TestInspectStopsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := preflight.Inspect(ctx, connectX(t, nil), []string{pf0}, preflight.Options{})
	if r.PFs[0].Verdict != preflight.CannotEnforce || !strings.Contains(r.PFs[0].Error, "context canceled") {
		t.Errorf("cancelled inspection: %+v", r.PFs[0])
	}
}

func TestPFsOfVFs(t *testing.T) {
	f := connectX(t, nil)
	pfs, notVFs := preflight.PFsOfVFs(f, []string{"0000:3b:08.2", "0000:3b:00.3", "0000:3b:00.2", "0000:3b:00.0", "gpu-7", "0000:3b:08.3"})
	if !slices.Equal(pfs, []string{"0000:3b:00.0", "0000:3b:00.1"}) {
		t.Errorf("PFs %q", pfs)
	}
	if !slices.Equal(notVFs, []string{"0000:3b:00.0", "gpu-7"}) {
		t.Errorf("not VFs %q", notVFs)
	}
}

func TestVerdictLabels(t *testing.T) {
	var got []string
	for _, v := range preflight.Verdicts {
		got = append(got, v.Label())
	}
	if !slices.Equal(got, []string{"hardware", "software-only", "cannot-enforce"}) {
		t.Errorf("labels %q", got)
	}
}

// resolveProfile is how the agent resolves --offload-profile for Inspect.
func resolveProfile(flag, kernel string) (preflight.Profile, error) {
	p, err := tcdriver.ParseProfile(flag, kernel)
	return preflight.Profile{Name: p.Name, Hardware: p.Hardware, CtNew: p.CtNew}, err
}
