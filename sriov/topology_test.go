package sriov_test

import (
	"errors"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov/sriovtest"
)

// The bridge of the topology contract: accelerated-bridge-cni's br0 with
// PF0's uplink and two of its VF representors; PF1's representor is on no
// bridge.
var (
	bridgePorts = []string{"ens1f0np0", "ens1f0npf0vf0", "ens1f0npf0vf1"}
	unbridged   = "ens1f1npf1vf1"
)

// checkTopology is the contract both topologies meet.
func checkTopology(t *testing.T, topo sriov.Topology) {
	t.Helper()
	for _, dev := range bridgePorts {
		if br, err := topo.BridgeOf(dev); err != nil || br != "br0" {
			t.Errorf("BridgeOf(%s) = %q, %v; want br0", dev, br, err)
		}
	}
	if br, err := topo.BridgeOf(unbridged); err != nil || br != "" {
		t.Errorf("BridgeOf(%s) = %q, %v; want none", unbridged, br, err)
	}
	if _, err := topo.BridgeOf("nosuchdev0"); !errors.Is(err, sriov.ErrNoNetdev) || !strings.Contains(err.Error(), "nosuchdev0") {
		t.Errorf("BridgeOf(nosuchdev0) error = %v, want ErrNoNetdev naming it", err)
	}
	if got, err := topo.BridgePorts("br0"); err != nil || !slices.Equal(got, bridgePorts) {
		t.Errorf("BridgePorts(br0) = %v, %v; want %v", got, err, bridgePorts)
	}
}

func TestFakeTopology(t *testing.T) {
	f := testNIC().Fake()
	for _, dev := range bridgePorts {
		f.SetMaster(dev, "br0")
	}
	checkTopology(t, f)

	vf, err := f.Resolve("0000:3b:00.2")
	if err != nil {
		t.Fatal(err)
	}
	if mac, err := f.VFMAC(vf); err != nil || mac != nil {
		t.Errorf("VFMAC before any is set = %v, %v; want none", mac, err)
	}
	want := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	f.SetVFMAC(vf.PCIAddress, want)
	if mac, err := f.VFMAC(vf); err != nil || mac.String() != want.String() {
		t.Errorf("VFMAC = %v, %v; want %s", mac, err, want)
	}
	// Asked about a VF index its PF does not have: an error, no guess.
	other := vf
	other.Index = 7
	if _, err := f.VFMAC(other); err == nil || !strings.Contains(err.Error(), "reports no VF 7") {
		t.Errorf("VFMAC of VF index 7 = %v, want an error", err)
	}
	f.SetMaster("ens1f0npf0vf1", "")
	if got, _ := f.BridgePorts("br0"); slices.Contains(got, "ens1f0npf0vf1") {
		t.Errorf("released port still listed: %v", got)
	}
}

// TestNetlinkTopologyInNamespace runs NetlinkTopology over a real Linux
// bridge in a private network namespace; a netdev enslaved to a bond is on
// no bridge.
func TestNetlinkTopologyInNamespace(t *testing.T) {
	if !sriovtest.InPrivateNamespace(t) {
		return
	}
	nic := testNIC()
	sriovtest.CreateNetdevs(t, nic)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	for _, dev := range bridgePorts {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetMaster(l, br); err != nil {
			t.Fatalf("enslave %s: %v", dev, err)
		}
	}
	checkTopology(t, sriov.NetlinkTopology{})

	bond := netlink.NewLinkBond(netlink.LinkAttrs{Name: "bond0"})
	if err := netlink.LinkAdd(bond); err != nil {
		t.Skipf("no bonding in this kernel: %v", err)
	}
	l, err := netlink.LinkByName(unbridged)
	if err != nil {
		t.Fatal(err)
	}
	_ = netlink.LinkSetDown(l)
	if err := netlink.LinkSetMaster(l, bond); err != nil {
		t.Fatalf("enslave %s to bond0: %v", unbridged, err)
	}
	if got, err := (sriov.NetlinkTopology{}).BridgeOf(unbridged); err != nil || got != "" {
		t.Errorf("BridgeOf(%s) on a bond = %q, %v; want none", unbridged, got, err)
	}
}
