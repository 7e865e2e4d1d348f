package sriov

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestVFMACOf: the MAC the PF reports for a VF; all zeros (not set
// administratively) is none, and a VF the PF does not report is an error.
func TestVFMACOf(t *testing.T) {
	vf := VF{PCIAddress: "0000:3b:00.3", PFPCIAddress: "0000:3b:00.0", Uplink: "p0", Index: 1}
	set := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	for _, tc := range []struct {
		name    string
		infos   []netlink.VfInfo
		want    string
		wantErr bool
	}{
		{"set", []netlink.VfInfo{{ID: 0, Mac: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}}, {ID: 1, Mac: set}}, set.String(), false},
		{"all zeros", []netlink.VfInfo{{ID: 1, Mac: make(net.HardwareAddr, 6)}}, "", false},
		{"empty", []netlink.VfInfo{{ID: 1}}, "", false},
		{"not reported", []netlink.VfInfo{{ID: 0, Mac: set}}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mac, err := vfMACOf(vf, tc.infos)
			if (err != nil) != tc.wantErr || mac.String() != tc.want {
				t.Errorf("vfMACOf = %q, %v; want %q (error %v)", mac, err, tc.want, tc.wantErr)
			}
		})
	}
}
