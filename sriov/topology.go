package sriov

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sort"

	"github.com/vishvananda/netlink"
)

// Topology says where representors sit in the node's Linux bridges and
// which MAC address a VF has. The bridge placement of the TC driver needs
// both: a pod's ingress is decided on every other port of its bridge,
// dispatched on the pod's MAC.
type Topology interface {
	// BridgeOf returns the Linux bridge the netdev is a port of, "" when it
	// is on none (its master, if any, is no bridge).
	BridgeOf(dev string) (string, error)
	// BridgePorts lists the netdevs enslaved to the bridge, sorted.
	BridgePorts(bridge string) ([]string, error)
	// VFMAC returns the VF's MAC address as its PF reports it
	// (IFLA_VF_MAC), nil when the PF reports none (all zeros: not set
	// administratively).
	VFMAC(vf VF) (net.HardwareAddr, error)
}

// ErrNoNetdev is wrapped when a netdev the topology is asked about does
// not exist.
var ErrNoNetdev = errors.New("no such netdev")

// NetlinkTopology reads the topology from the kernel over netlink.
type NetlinkTopology struct{}

var _ Topology = NetlinkTopology{}

func linkByName(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("netdev %s: %w", name, ErrNoNetdev)
		}
		return nil, fmt.Errorf("look up netdev %s: %w", name, err)
	}
	return l, nil
}

// BridgeOf implements Topology.
func (NetlinkTopology) BridgeOf(dev string) (string, error) {
	l, err := linkByName(dev)
	if err != nil {
		return "", err
	}
	if l.Attrs().MasterIndex == 0 {
		return "", nil
	}
	m, err := netlink.LinkByIndex(l.Attrs().MasterIndex)
	if err != nil {
		return "", fmt.Errorf("netdev %s: look up its master (ifindex %d): %w", dev, l.Attrs().MasterIndex, err)
	}
	if _, ok := m.(*netlink.Bridge); !ok {
		return "", nil // a bond, a VRF…: no bridge the driver programs
	}
	return m.Attrs().Name, nil
}

// BridgePorts implements Topology.
func (NetlinkTopology) BridgePorts(bridge string) ([]string, error) {
	br, err := linkByName(bridge)
	if err != nil {
		return nil, err
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("bridge %s: listing netdevs: %w", bridge, err)
	}
	var out []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			out = append(out, l.Attrs().Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// VFMAC implements Topology: the uplink representor is the PF's netdev in
// switchdev mode, and reports its VFs' administrative MACs.
func (NetlinkTopology) VFMAC(vf VF) (net.HardwareAddr, error) {
	l, err := linkByName(vf.Uplink)
	if err != nil {
		return nil, fmt.Errorf("VF %s: %w", vf.PCIAddress, err)
	}
	return vfMACOf(vf, l.Attrs().Vfs)
}

func vfMACOf(vf VF, infos []netlink.VfInfo) (net.HardwareAddr, error) {
	for _, i := range infos {
		if i.ID == vf.Index {
			if len(i.Mac) == 0 || bytes.Equal(i.Mac, make([]byte, len(i.Mac))) {
				return nil, nil
			}
			return append(net.HardwareAddr(nil), i.Mac...), nil
		}
	}
	return nil, fmt.Errorf("VF %s: PF %s (%s) reports no VF %d", vf.PCIAddress, vf.PFPCIAddress, vf.Uplink, vf.Index)
}
