package preflight

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// System is the node's Host: sysfs under Sysfs.Root, devlink, ethtool and
// rtnetlink in the caller's network namespace.
type System struct {
	Sysfs
}

var _ Host = System{}

// NewSystem returns the Host that reads this node (/sys and netlink).
func NewSystem() System { return System{Sysfs: Sysfs{Root: "/sys"}} }

// KernelRelease implements Host.
func (System) KernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// LinkKind implements Host.
func (System) LinkKind(netdev string) (string, error) {
	l, err := netlink.LinkByName(netdev)
	if err != nil {
		return "", fmt.Errorf("netdev %s: %w", netdev, err)
	}
	if _, ok := l.(*netlink.Device); ok {
		return "", nil // no IFLA_INFO_KIND: a driver's own netdev
	}
	return l.Type(), nil
}

// OffloadedFDB implements Host: `bridge fdb show br BRIDGE`, the entries
// with the offload flag counted per port.
func (System) OffloadedFDB(bridge string) (map[string]int, error) {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", bridge, err)
	}
	entries, err := netlink.NeighList(0, unix.AF_BRIDGE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("bridge %s: FDB dump: %w", bridge, err)
	}
	out := map[string]int{}
	names := map[int]string{}
	for _, e := range entries {
		if e.MasterIndex != br.Attrs().Index || e.Flags&netlink.NTF_OFFLOADED == 0 {
			continue
		}
		name, ok := names[e.LinkIndex]
		if !ok {
			if l, err := netlink.LinkByIndex(e.LinkIndex); err == nil {
				name = l.Attrs().Name
			} else {
				name = fmt.Sprintf("ifindex %d", e.LinkIndex)
			}
			names[e.LinkIndex] = name
		}
		out[name]++
	}
	return out, nil
}
