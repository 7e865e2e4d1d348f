package datapath

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// TestVFUseInUse pins what "in use" means for a VF (VFUse.InUse): every
// reason on its own, none for a free VF, and the refusal's message.
func TestVFUseInUse(t *testing.T) {
	free := VFUse{VF: 3, PCI: "0000:03:00.5", Driver: "mlx5_core", PFDriver: "mlx5_core", Netdevs: []string{"ens1f0v3"}, Rep: "ens1f0r3"}
	with := func(f func(*VFUse)) VFUse { u := free; f(&u); return u }
	for _, tc := range []struct {
		name string
		use  VFUse
		want []string
	}{
		{"free VF, netdev in the host namespace", free, nil},
		{"free netdevsim VF (no PCI device, no netdev)", VFUse{VF: 0, Rep: "eth1"}, nil},
		{"unbound", with(func(u *VFUse) { u.Driver, u.Netdevs = "", nil }), []string{"bound to no driver"}},
		{"vfio-pci", with(func(u *VFUse) { u.Driver, u.Netdevs = "vfio-pci", nil }), []string{"bound to vfio-pci (a VM or a DPDK application)"}},
		{"netdev moved into a pod", with(func(u *VFUse) { u.Netdevs = nil }), []string{"its netdev is not in the host network namespace (moved into a pod)"}},
		{"netdev in a bond", with(func(u *VFUse) { u.NetdevMaster = "bond0" }), []string{"its netdev is enslaved to bond0"}},
		{"netdev with an address", with(func(u *VFUse) { u.NetdevAddrs = []string{"192.0.2.7/24"} }), []string{"its netdev has addresses 192.0.2.7/24"}},
		{"representor on a bridge", with(func(u *VFUse) { u.RepMaster = "br-sriov" }), []string{"its representor ens1f0r3 is a port of br-sriov"}},
		{"representor with filters", with(func(u *VFUse) { u.RepFilters = 12 }), []string{"its representor ens1f0r3 carries 12 TC filters"}},
		{"allocated to a pod", with(func(u *VFUse) { u.AllocatedTo = []string{"default/db-0"} }), []string{"allocated by the kubelet to default/db-0"}},
		{"several at once", with(func(u *VFUse) { u.Netdevs, u.RepMaster, u.RepFilters = nil, "br0", 3 }), []string{
			"its netdev is not in the host network namespace (moved into a pod)", "its representor ens1f0r3 is a port of br0", "its representor ens1f0r3 carries 3 TC filters"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.use.InUse(); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("InUse() = %q, want %q", got, tc.want)
			}
		})
	}

	if err := RefuseInUse("ens1f0", []VFUse{free, free}); err != nil {
		t.Errorf("free VFs refused: %v", err)
	}
	err := RefuseInUse("ens1f0", []VFUse{free, with(func(u *VFUse) { u.VF, u.RepMaster = 5, "br0" }), with(func(u *VFUse) { u.VF, u.Driver = 1, "vfio-pci" })})
	var inUse *InUseError
	if !errors.As(err, &inUse) || len(inUse.Uses) != 2 {
		t.Fatalf("want an *InUseError for VFs 1 and 5, got %v", err)
	}
	want := "PF ens1f0 has VFs in use, refusing to touch it:\n  VF 1: bound to vfio-pci (a VM or a DPDK application)\n  VF 5: its representor ens1f0r3 is a port of br0\n"
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error:\n%s\nwant it to start with:\n%s", err, want)
	}
}

// TestPFInUse: a legacy PF the host uses is not switched to switchdev.
func TestPFInUse(t *testing.T) {
	for _, tc := range []struct {
		master string
		addrs  []string
		want   string
	}{
		{"", nil, ""},
		{"bond0", nil, "is enslaved to bond0"},
		{"", []string{"10.0.0.5/24", "fd00::5/64"}, "carries the addresses 10.0.0.5/24, fd00::5/64"},
		{"br-ex", []string{"10.0.0.5/24"}, "is enslaved to br-ex and carries the addresses 10.0.0.5/24"},
	} {
		if got := pfInUse(tc.master, tc.addrs); got != tc.want {
			t.Errorf("pfInUse(%q, %q) = %q, want %q", tc.master, tc.addrs, got, tc.want)
		}
	}
}
