package datapath

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
)

// created remembers the network namespaces and bridges topologies made,
// so that a snapshot taken on a node (HostSnapshot with a PF) can tell
// whether one was left behind without listing everything else the node
// has.
var created struct {
	sync.Mutex
	netns, bridges map[string]bool
}

func remember(set *map[string]bool, name string) {
	created.Lock()
	defer created.Unlock()
	if *set == nil {
		*set = map[string]bool{}
	}
	(*set)[name] = true
}

// HostSnapshot is what the switchdev backend must leave as it found it,
// one line per fact, sorted. With pf "" (the bed) it covers the whole
// host: every netdev (type, master, state, qdiscs, filter counts on the
// clsact hooks, the VF settings of PFs), every named network namespace,
// every netdevsim device, and sriov_numvfs and the eswitch mode of every
// PF. With a PF (a node, where pods come and go meanwhile) it covers that
// PF, its VFs' netdevs and its representors, its sriov_numvfs and eswitch
// mode, and the namespaces and bridges the topologies made.
func HostSnapshot(pf string) (string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return "", err
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var pfDev, pfSwitch string
	if pf != "" {
		if _, err := os.Stat(filepath.Join(sysClassNet, pf)); err != nil {
			return "", fmt.Errorf("PF %s: no such netdev", pf)
		}
		if pfDev, err = filepath.EvalSymlinks(filepath.Join(sysClassNet, pf, "device")); err != nil {
			return "", fmt.Errorf("PF %s is a virtual netdev, not an SR-IOV PF's uplink", pf)
		}
		pfSwitch, _ = readSysNet(pf, "phys_switch_id")
	}
	mine := func(name string) bool {
		if pf == "" || name == pf {
			return true
		}
		if sw, err := readSysNet(name, "phys_switch_id"); err == nil && pfSwitch != "" && sw == pfSwitch {
			return true
		}
		phys, err := filepath.EvalSymlinks(filepath.Join(sysClassNet, name, "device", "physfn"))
		return err == nil && phys == pfDev
	}
	var lines []string
	for _, l := range links {
		a := l.Attrs()
		if !mine(a.Name) {
			continue
		}
		lines = append(lines, fmt.Sprintf("link %s type=%s master=%s up=%v", a.Name, l.Type(), names[a.MasterIndex], a.Flags&net.FlagUp != 0))
		if qs, err := netlink.QdiscList(l); err == nil {
			for _, q := range qs {
				lines = append(lines, fmt.Sprintf("qdisc %s %s parent=%x", a.Name, q.Type(), q.Attrs().Parent))
			}
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			if fs, _ := netlink.FilterList(l, parent); len(fs) > 0 {
				lines = append(lines, fmt.Sprintf("filters %s parent=%x: %d", a.Name, parent, len(fs)))
			}
		}
		for _, vf := range a.Vfs {
			lines = append(lines, fmt.Sprintf("vf %s/%d mac=%s trust=%d spoofchk=%v", a.Name, vf.ID, vf.Mac, vf.Trust, vf.Spoofchk))
		}
		if dev, err := filepath.EvalSymlinks(filepath.Join(sysClassNet, a.Name, "device")); err == nil {
			if n, err := readInt(filepath.Join(dev, "sriov_numvfs")); err == nil {
				mode := "none"
				sub, _ := filepath.EvalSymlinks(filepath.Join(dev, "subsystem"))
				if dl, err := netlink.DevLinkGetDeviceByName(filepath.Base(sub), filepath.Base(dev)); err == nil {
					mode = dl.Attrs.Eswitch.Mode
				}
				lines = append(lines, fmt.Sprintf("pf %s sriov_numvfs=%d eswitch=%s", a.Name, n, mode))
			}
		}
	}
	nss, _ := os.ReadDir("/run/netns")
	created.Lock()
	for _, e := range nss {
		if pf == "" || created.netns[e.Name()] {
			lines = append(lines, "netns "+e.Name())
		}
	}
	if pf != "" {
		for br := range created.bridges {
			if _, err := netlink.LinkByName(br); err == nil {
				lines = append(lines, "bridge "+br)
			}
		}
	}
	created.Unlock()
	if pf == "" {
		devs, _ := os.ReadDir(filepath.Join(nsimBus, "devices"))
		for _, e := range devs {
			lines = append(lines, "netdevsim "+e.Name())
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n"), nil
}

// SnapshotDiff lists the lines only in before ("- ") and only in after
// ("+ "), sorted; empty when they are equal.
func SnapshotDiff(before, after string) []string {
	if before == after {
		return nil
	}
	b, a := map[string]bool{}, map[string]bool{}
	for _, l := range strings.Split(before, "\n") {
		b[l] = true
	}
	for _, l := range strings.Split(after, "\n") {
		a[l] = true
	}
	var diff []string
	for l := range b {
		if !a[l] {
			diff = append(diff, "- "+l)
		}
	}
	for l := range a {
		if !b[l] {
			diff = append(diff, "+ "+l)
		}
	}
	sort.Strings(diff)
	return diff
}
