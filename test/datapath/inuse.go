package datapath

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
)

// VFUse is what the backend knows of one existing VF before it takes the
// PF, read from sysfs and netlink in the host's network namespace.
type VFUse struct {
	VF int
	// PCI is the VF's PCI address ("" on netdevsim, whose VFs have no
	// device of their own).
	PCI string
	// Driver is the driver the VF is bound to ("" unbound); PFDriver the
	// PF's, the one that gives a VF a netdev (mlx5_core).
	Driver, PFDriver string
	// Netdevs are the VF's netdevs visible in the host namespace (a netdev
	// moved into a pod's namespace disappears from the VF's sysfs net/).
	Netdevs []string
	// NetdevMaster is the master of the VF's netdev ("" none), NetdevAddrs
	// its global IP addresses.
	NetdevMaster string
	NetdevAddrs  []string
	// Rep is the VF's representor ("" in legacy mode), RepMaster its
	// master, RepFilters how many TC filters its clsact hooks carry.
	Rep, RepMaster string
	RepFilters     int
	// AllocatedTo lists the pods the kubelet allocated the VF to (its PCI
	// address among their devices, PodResources List).
	AllocatedTo []string
}

// InUse says why a VF is in use, nil if it is free. A VF is in use, and
// the backend refuses the whole PF, when any of these holds:
//
//   - on a PCI PF, it is bound to no driver, or to another driver than the
//     PF's (vfio-pci: a VM or a DPDK application has it);
//   - on a PCI PF, it is bound to the PF's driver but has no netdev in the
//     host namespace: its netdev was moved into a pod's (SR-IOV CNI,
//     accelerated-bridge-cni);
//   - its netdev is enslaved (to a bridge, a bond) or has a global IP
//     address: the host uses it;
//   - its representor is enslaved (the bridge of accelerated-bridge-cni:
//     a pod's port) or carries TC filters (an agent programs it);
//   - the kubelet lists it among a pod's devices (PodResources), when
//     there is a kubelet to ask.
//
// A VF whose netdev is merely up, or whose representor is up, is free.
func (u VFUse) InUse() []string {
	var why []string
	if u.PCI != "" {
		switch {
		case u.Driver == "":
			why = append(why, "bound to no driver")
		case u.Driver != u.PFDriver:
			why = append(why, "bound to "+u.Driver+" (a VM or a DPDK application)")
		case len(u.Netdevs) == 0:
			why = append(why, "its netdev is not in the host network namespace (moved into a pod)")
		}
	}
	if u.NetdevMaster != "" {
		why = append(why, "its netdev is enslaved to "+u.NetdevMaster)
	}
	if len(u.NetdevAddrs) > 0 {
		why = append(why, "its netdev has addresses "+strings.Join(u.NetdevAddrs, ", "))
	}
	if u.RepMaster != "" {
		why = append(why, "its representor "+u.Rep+" is a port of "+u.RepMaster)
	}
	if u.RepFilters > 0 {
		why = append(why, fmt.Sprintf("its representor %s carries %d TC filters", u.Rep, u.RepFilters))
	}
	if len(u.AllocatedTo) > 0 {
		why = append(why, "allocated by the kubelet to "+strings.Join(u.AllocatedTo, ", "))
	}
	return why
}

// InUseError is the refusal to take a PF with VFs in use.
type InUseError struct {
	PF   string
	Uses map[int][]string // VF → why it is in use
}

func (e *InUseError) Error() string {
	vfs := make([]int, 0, len(e.Uses))
	for n := range e.Uses {
		vfs = append(vfs, n)
	}
	sort.Ints(vfs)
	var b strings.Builder
	fmt.Fprintf(&b, "PF %s has VFs in use, refusing to touch it:", e.PF)
	for _, n := range vfs {
		fmt.Fprintf(&b, "\n  VF %d: %s", n, strings.Join(e.Uses[n], "; "))
	}
	b.WriteString("\nrun the conformance run on a PF whose VFs are all free (drain the node's SR-IOV pods), or on one with sriov_numvfs 0")
	return b.String()
}

// RefuseInUse returns an *InUseError if any of uses is in use.
func RefuseInUse(pf string, uses []VFUse) error {
	e := &InUseError{PF: pf, Uses: map[int][]string{}}
	for _, u := range uses {
		if why := u.InUse(); len(why) > 0 {
			e.Uses[u.VF] = why
		}
	}
	if len(e.Uses) == 0 {
		return nil
	}
	return e
}

// refuseInUse reads every existing VF's use and refuses the PF if one is
// in use.
func (p *switchdevPF) refuseInUse() error {
	var reps map[int]string
	if p.info.OldMode == "switchdev" {
		var err error
		if _, reps, err = representors(p.name); err != nil {
			return err
		}
	}
	uses := make([]VFUse, 0, len(p.vfs))
	for _, v := range p.vfs {
		u := VFUse{VF: v.n, PFDriver: p.info.Driver, Rep: reps[v.n]}
		if !p.info.Wired {
			vfDir, err := filepath.EvalSymlinks(filepath.Join(p.devDir, fmt.Sprintf("virtfn%d", v.n)))
			if err != nil {
				return fmt.Errorf("VF %d of %s: %w", v.n, p.name, err)
			}
			u.PCI = filepath.Base(vfDir)
			if drv, err := filepath.EvalSymlinks(filepath.Join(vfDir, "driver")); err == nil {
				u.Driver = filepath.Base(drv)
			}
			ents, _ := os.ReadDir(filepath.Join(vfDir, "net"))
			for _, e := range ents {
				u.Netdevs = append(u.Netdevs, e.Name())
			}
		}
		for _, nd := range u.Netdevs {
			l, err := netlink.LinkByName(nd)
			if err != nil {
				continue
			}
			u.NetdevMaster = masterName(l)
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_ALL)
			for _, a := range addrs {
				if a.IP.IsGlobalUnicast() {
					u.NetdevAddrs = append(u.NetdevAddrs, a.IPNet.String())
				}
			}
		}
		if u.Rep != "" {
			if l, err := netlink.LinkByName(u.Rep); err == nil {
				u.RepMaster = masterName(l)
				for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
					if fs, err := netlink.FilterList(l, parent); err == nil {
						u.RepFilters += len(fs)
					}
				}
			}
		}
		uses = append(uses, u)
	}
	note, err := kubeletNote(uses)
	if err != nil {
		return fmt.Errorf("PF %s: %w (refusing: a VF may be a pod's)", p.name, err)
	}
	p.info.Kubelet = note
	return RefuseInUse(p.name, uses)
}

func masterName(l netlink.Link) string {
	if l.Attrs().MasterIndex == 0 {
		return ""
	}
	m, err := netlink.LinkByIndex(l.Attrs().MasterIndex)
	if err != nil {
		return fmt.Sprintf("ifindex %d", l.Attrs().MasterIndex)
	}
	return m.Attrs().Name
}
