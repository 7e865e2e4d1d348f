//go:build kernel

package preflight_test

import (
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/preflight"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// TestKernelFeatures reads features of a veth over ethtool netlink: one it
// has on and may switch (tx-checksum-ip-generic), and hw-tc-offload, which
// a veth cannot do (off [fixed]); and an unknown netdev's error names it.
func TestKernelFeatures(t *testing.T) {
	datapath.RequireBed(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pfeat0"}, PeerName: "pfeat0p"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(veth) })
	for _, tc := range []struct {
		feature string
		want    preflight.Feature
	}{
		{"tx-checksum-ip-generic", preflight.Feature{Active: true, Changeable: true}},
		{preflight.FeatureTCOffload, preflight.Feature{}},
	} {
		got, err := preflight.ReadFeature("pfeat0", tc.feature)
		if err != nil || got != tc.want {
			t.Errorf("%s: %+v, %v; want %+v", tc.feature, got, err, tc.want)
		}
	}
	if _, err := (preflight.System{}).TCOffload("nosuchdev0"); err == nil || err.Error()[:17] != "netdev nosuchdev0" {
		t.Errorf("unknown netdev: %v", err)
	}
}
