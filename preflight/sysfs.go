package preflight

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Sysfs reads PFs, VFs and netdevs from a sysfs tree: /sys on a node, a
// temporary tree in tests (the same code reads both). It reads what
// sriovnet reads (physfn and virtfnN links, phys_switch_id and
// phys_port_name), and also what sriovnet has no call for: the driver, the
// devlink bus, sriov_numvfs and the master of each port, for PFs in legacy
// mode too, where sriovnet finds no uplink representor.
type Sysfs struct {
	// Root is the sysfs mount point, "/sys" on a node.
	Root string
}

var (
	pciAddress    = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$`)
	uplinkPort    = regexp.MustCompile(`^p(\d+)$`)
	vfPort        = regexp.MustCompile(`^(?:c\d+)?pf(\d+)vf(\d+)$`)
	safeNetdevRef = regexp.MustCompile(`^[^/\s]{1,15}$`)
)

func (s Sysfs) path(elem ...string) string {
	return filepath.Join(append([]string{s.Root}, elem...)...)
}

// read returns a sysfs attribute, trimmed; "" when it cannot be read (many
// drivers answer EOPNOTSUPP for phys_port_name and phys_switch_id).
func read(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// linkBase is the last element of a symlink's target, "" when there is no
// such link.
func linkBase(path string) string {
	t, err := os.Readlink(path)
	if err != nil {
		return ""
	}
	return filepath.Base(t)
}

// PFOfVF implements Host.
func (s Sysfs) PFOfVF(vfPCI string) (string, error) {
	if !pciAddress.MatchString(vfPCI) {
		return "", fmt.Errorf("device %q: %w: not a PCI address", vfPCI, ErrNotVF)
	}
	dir := s.path("bus/pci/devices", vfPCI)
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("VF %s: %w: %s does not exist", vfPCI, ErrNotVF, dir)
	}
	pf := linkBase(filepath.Join(dir, "physfn"))
	if pf == "" {
		return "", fmt.Errorf("device %s: %w: it has no physfn link", vfPCI, ErrNotVF)
	}
	return pf, nil
}

// Device implements Host: pf is a PCI address (0000:3b:00.0) or a netdev
// name (ens1f0np0, or a veth).
func (s Sysfs) Device(pf string) (Device, error) {
	if pciAddress.MatchString(pf) {
		return s.pciDevice(pf)
	}
	if !safeNetdevRef.MatchString(pf) || pf == "." || pf == ".." {
		return Device{}, fmt.Errorf("PF %q: neither a PCI address (0000:3b:00.0) nor a netdev name", pf)
	}
	if _, err := os.Stat(s.path("class/net", pf)); err != nil {
		return Device{}, fmt.Errorf("PF %s: no such netdev (%s does not exist)", pf, s.path("class/net", pf))
	}
	nd := s.netdev(pf)
	if vfPort.MatchString(nd.PortName) {
		return Device{}, fmt.Errorf("PF %s: is the VF representor %s, not a PF: name its PF's uplink", pf, nd.PortName)
	}
	devDir, err := filepath.EvalSymlinks(s.path("class/net", pf, "device"))
	if errors.Is(err, os.ErrNotExist) {
		return Device{Uplink: nd, NumVFs: -1}, nil // veth, dummy, tap: no device
	} else if err != nil {
		return Device{}, fmt.Errorf("PF %s: its device: %w", pf, err)
	}
	if _, err := os.Lstat(filepath.Join(devDir, "physfn")); err == nil {
		return Device{}, fmt.Errorf("PF %s: is the netdev of VF %s, not of a PF", pf, filepath.Base(devDir))
	}
	d := s.describe(devDir)
	d.Uplink = nd
	d.Representors = s.representors(nd, d.PCI)
	return d, nil
}

func (s Sysfs) pciDevice(addr string) (Device, error) {
	devDir, err := filepath.EvalSymlinks(s.path("bus/pci/devices", addr))
	if err != nil {
		return Device{}, fmt.Errorf("PF %s: no such PCI device (%s does not exist)", addr, s.path("bus/pci/devices", addr))
	}
	if pf := linkBase(filepath.Join(devDir, "physfn")); pf != "" {
		return Device{}, fmt.Errorf("PF %s: is a VF of PF %s: name the PF", addr, pf)
	}
	d := s.describe(devDir)
	d.Devlink.Bus = "pci"
	// The uplink: the PF's netdev with port name pN (switchdev), else its
	// only netdev that is no representor (legacy mode has no port names).
	var uplinks, others []string
	ents, _ := os.ReadDir(filepath.Join(devDir, "net"))
	for _, e := range ents {
		switch nd := s.netdev(e.Name()); {
		case uplinkPort.MatchString(nd.PortName):
			uplinks = append(uplinks, nd.Name)
		case !vfPort.MatchString(nd.PortName):
			others = append(others, nd.Name)
		}
	}
	candidates := uplinks
	if len(candidates) == 0 {
		candidates = others
	}
	switch len(candidates) {
	case 0:
		return Device{}, fmt.Errorf("PF %s: has no netdev (is its driver bound? driver: %q)", addr, dash(d.Driver))
	case 1:
	default:
		sort.Strings(candidates)
		return Device{}, fmt.Errorf("PF %s: has netdevs %s and none with phys_port_name pN: name the uplink netdev instead", addr, strings.Join(candidates, ", "))
	}
	d.Uplink = s.netdev(candidates[0])
	d.Representors = s.representors(d.Uplink, d.PCI)
	return d, nil
}

// describe reads a device directory: devlink handle, PCI address, driver
// and VFs.
func (s Sysfs) describe(devDir string) Device {
	name := filepath.Base(devDir)
	d := Device{Devlink: DevlinkHandle{Bus: linkBase(filepath.Join(devDir, "subsystem")), Name: name},
		Driver: linkBase(filepath.Join(devDir, "driver")), NumVFs: -1, VFPCI: map[int]string{}}
	if pciAddress.MatchString(name) {
		d.PCI = name
		d.Devlink.Bus = "pci"
	}
	if d.Devlink.Bus == "" {
		d.Devlink.Bus = "unknown"
	}
	if n, err := strconv.Atoi(read(filepath.Join(devDir, "sriov_numvfs"))); err == nil {
		d.NumVFs = n
	}
	links, _ := filepath.Glob(filepath.Join(devDir, "virtfn*"))
	for _, l := range links {
		if i, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(l), "virtfn")); err == nil {
			d.VFPCI[i] = linkBase(l)
		}
	}
	return d
}

func (s Sysfs) netdev(name string) Netdev {
	dir := s.path("class/net", name)
	nd := Netdev{Name: name, PortName: read(filepath.Join(dir, "phys_port_name")), SwitchID: read(filepath.Join(dir, "phys_switch_id")),
		Master: linkBase(filepath.Join(dir, "master"))}
	if nd.Master != "" {
		if st, err := os.Stat(s.path("class/net", nd.Master, "bridge")); err == nil && st.IsDir() {
			nd.MasterIsBridge = true
		}
	}
	return nd
}

// representors finds the VF representors of the PF as sriovnet does: every
// netdev with the uplink's phys_switch_id and a pf<N>vf<M> port name whose
// N is the PF's PCI function (the ports of a dual-port NIC may share one
// switch id). A PF that is no PCI function (netdevsim, whose uplink is p1
// and representors pf0vfM) takes every pf<N>vf<M> on its switch.
func (s Sysfs) representors(uplink Netdev, pci string) []Representor {
	if uplink.SwitchID == "" {
		return nil
	}
	pfNum := ""
	if pci != "" {
		pfNum = pci[len(pci)-1:]
	}
	ents, _ := os.ReadDir(s.path("class/net"))
	var reps []Representor
	for _, e := range ents {
		if e.Name() == uplink.Name {
			continue
		}
		nd := s.netdev(e.Name())
		m := vfPort.FindStringSubmatch(nd.PortName)
		if m == nil || nd.SwitchID != uplink.SwitchID || pfNum != "" && m[1] != pfNum {
			continue
		}
		vf, _ := strconv.Atoi(m[2])
		reps = append(reps, Representor{Netdev: nd, VF: vf})
	}
	sort.Slice(reps, func(i, j int) bool { return reps[i].VF < reps[j].VF })
	return reps
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
