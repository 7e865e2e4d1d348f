package sriov_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov/sriovtest"
)

// testNIC is the ConnectX-6 Dx plus the broken states a node can be in: a VF
// whose representor is missing and a second card left in legacy mode.
func testNIC() sriovtest.NIC {
	n := sriovtest.ConnectX6Dx()
	n.PFs[1].VFs = append(n.PFs[1].VFs, sriovtest.VF{PCI: "0000:3b:08.4", Netdev: "ens1f1v2"})
	n.PFs = append(n.PFs, sriovtest.PF{
		PCI: "0000:5e:00.0", Uplink: "ens2f0", TotalVFs: 4,
		VFs: []sriovtest.VF{{PCI: "0000:5e:00.2", Netdev: "ens2f0v0", Representor: "ens2f0npf0vf0"}},
	})
	return n
}

type resolveCase struct {
	name    string
	vfPCI   string
	want    sriov.VF
	wantErr error
}

var resolveCases = []resolveCase{
	{name: "first VF of PF0", vfPCI: "0000:3b:00.2",
		want: sriov.VF{PCIAddress: "0000:3b:00.2", PFPCIAddress: "0000:3b:00.0", Uplink: "ens1f0np0", Index: 0, Representor: "ens1f0npf0vf0"}},
	{name: "last VF of PF0", vfPCI: "0000:3b:00.5",
		want: sriov.VF{PCIAddress: "0000:3b:00.5", PFPCIAddress: "0000:3b:00.0", Uplink: "ens1f0np0", Index: 3, Representor: "ens1f0npf0vf3"}},
	{name: "VF of PF1 on another bus slot", vfPCI: "0000:3b:08.3",
		want: sriov.VF{PCIAddress: "0000:3b:08.3", PFPCIAddress: "0000:3b:00.1", Uplink: "ens1f1np1", Index: 1, Representor: "ens1f1npf1vf1"}},
	{name: "a PF is not a VF", vfPCI: "0000:3b:00.0", wantErr: sriov.ErrNotVF},
	{name: "unknown PCI address", vfPCI: "0000:3b:09.0", wantErr: sriov.ErrUnknownDevice},
	{name: "device ID that is not a PCI address", vfPCI: "../../etc", wantErr: sriov.ErrInvalidAddress},
	{name: "VF without representor", vfPCI: "0000:3b:08.4", wantErr: sriov.ErrNoRepresentor},
	{name: "VF of a PF in legacy mode", vfPCI: "0000:5e:00.2", wantErr: sriov.ErrNotSwitchdev},
}

// checkResolver is the contract both resolvers meet.
func checkResolver(t *testing.T, r sriov.Resolver) {
	t.Helper()
	for _, tc := range resolveCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := r.Resolve(tc.vfPCI)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Resolve(%s) error = %v, want %v", tc.vfPCI, err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.vfPCI) {
					t.Errorf("error %q does not name the device %s", err, tc.vfPCI)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve(%s): %v", tc.vfPCI, err)
			}
			if got != tc.want {
				t.Errorf("Resolve(%s) = %+v, want %+v", tc.vfPCI, got, tc.want)
			}
		})
	}
}

func TestFakeResolver(t *testing.T) {
	checkResolver(t, testNIC().Fake())
}

func TestFakeRemoveRepresentor(t *testing.T) {
	f := testNIC().Fake()
	f.RemoveRepresentor("0000:3b:00.3")
	if _, err := f.Resolve("0000:3b:00.3"); !errors.Is(err, sriov.ErrNoRepresentor) {
		t.Fatalf("after RemoveRepresentor: err = %v, want ErrNoRepresentor", err)
	}
	if got := len(f.VFs()); got != 8 {
		t.Errorf("VFs() lists %d VFs, want 8", got)
	}
}

// TestSysfsResolverInNamespace runs the real resolver (sriovnet over /sys)
// on the fake ConnectX-6 Dx tree bind-mounted on /sys, with real netdevs.
func TestSysfsResolverInNamespace(t *testing.T) {
	if !sriovtest.InPrivateNamespace(t) {
		return
	}
	nic := testNIC()
	sriovtest.MountSys(t, nic)
	sriovtest.CreateNetdevs(t, nic)
	checkResolver(t, sriov.NewSysfsResolver())

	for _, name := range []string{"ens1f0np0", "ens1f0npf0vf0", "ens1f1npf1vf1"} {
		if ok, err := sriov.NetdevExists(name); err != nil || !ok {
			t.Errorf("NetdevExists(%s) = %v, %v; want true", name, ok, err)
		}
	}
	// The VF without representor has no netdev pair either.
	if ok, err := sriov.NetdevExists("ens1f1v2"); err != nil || ok {
		t.Errorf("NetdevExists(ens1f1v2) = %v, %v; want false", ok, err)
	}
}
