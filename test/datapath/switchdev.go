package datapath

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/preflight"
)

// The switchdev port backend: a pod's port is a VF of a PF in switchdev
// mode, its representor the bridge port, as accelerated-bridge-cni builds
// it. Two kinds of PF:
//
//   - a real SR-IOV PF (its device on the PCI bus): the VF's own netdev is
//     moved into the pod's namespace and renamed eth0, so frames cross the
//     NIC's eswitch between the VF and its representor;
//   - netdevsim (the kernel test bed): its VFs have no netdev and 6.1 has no
//     datapath between a VF and its representor, so the pod's eth0 is one
//     end of a veth pair whose host end is wired to the representor with
//     act_mirred: a matchall on the host end's ingress redirects what the pod
//     sends to the representor's ingress (where the bridge placement's
//     filters run, then the bridge), and a matchall on a prio qdisc at the
//     representor's root redirects what the bridge sends to it to the host
//     end (after the representor's clsact egress hook, so the representor
//     placement's filters still run; the driver never sees filters outside
//     clsact).
//
// The uplink is a VF too (the last one taken): its representor is the
// bridge's uplink port, its VF (or veth end) eth0 in the outside namespace,
// the remote pods macvlans of it. The PF's own uplink representor is not
// used: enslaving it to a test bridge would cut the node's traffic on that
// port, and frames sent out of it have no link partner to come back from.
//
// Everything is restored when the last topology using the PF ends: VF
// names, MACs, trust and spoof checking, representors' masters, state and
// qdiscs, the eswitch mode and sriov_numvfs; a netdevsim PF made for the
// run is deleted.

// defaultVFs is how many VFs the backend creates on a PF that has none:
// the largest topology of the suites has three local pods and the uplink.
const defaultVFs = 6

// VFsEnv overrides defaultVFs.
const VFsEnv = "MNPTC_HARDWARE_VFS"

// SwitchdevInfo describes the PF a switchdev topology runs on, for reports.
type SwitchdevInfo struct {
	PF, Bus, Device, Driver, DriverVersion, Firmware, BusInfo string
	// Mode is the eswitch mode during the run ("switchdev"), OldMode the
	// one restored afterwards.
	Mode, OldMode string
	// NumVFs is sriov_numvfs during the run, OldNumVFs the one restored.
	NumVFs, OldNumVFs int
	// HWTCOffload is the PF's hw-tc-offload feature ("on", "off", or why
	// it is unknown).
	HWTCOffload string
	// Preflight is the agent's offload preflight of the PF once set up.
	Preflight preflight.PF
	// Wired: the VFs have no netdev (netdevsim) and pods are veth pairs
	// wired to the representors with act_mirred; no frame crosses a NIC.
	Wired bool
	// Kubelet says what the kubelet was asked about the PF's VFs.
	Kubelet string
}

// HardwareEnforced says whether the NIC claims to enforce TC flower in
// hardware, which makes an in_hw mismatch a failure of the conformance run
// rather than a report: the agent's offload preflight judging the PF as it
// was set up for the run (its device alone, not the agent's flags).
func (i SwitchdevInfo) HardwareEnforced() (bool, string) {
	if i.Wired {
		// Never a NIC's verdict, whatever the preflight says.
		return false, string(i.Preflight.Verdict) + " (its VFs are veth pairs wired to the representors)"
	}
	return i.Preflight.Verdict == preflight.Hardware, string(i.Preflight.Verdict)
}

// vf is one VF of the PF.
type vf struct {
	n        int
	pci      string // "0000:03:00.2"; "" on netdevsim
	netdev   string // its netdev's name in the host namespace ("" on netdevsim)
	rep      string
	repIndex int
	what     string // what it stands for while taken ("pod a", "the uplink")
	// restored when it is released
	adminMAC   net.HardwareAddr
	trust, spf bool
}

// switchdevPF is a PF prepared for topologies: VFs created or taken, the
// eswitch in switchdev mode. One per PF name per process, shared by the
// topologies that use it at the same time.
type switchdevPF struct {
	info     SwitchdevInfo
	name     string
	devDir   string // /sys/bus/.../<device>
	nsimID   int    // netdevsim device made for the run, -1
	switchID string
	host     netns.NsHandle

	mu    sync.Mutex
	refs  int
	vfs   []*vf
	taken map[int]bool

	createdVFs, changedMode bool
	attached                bool // a VF was given to a topology
}

var (
	pfsMu sync.Mutex
	pfs   = map[string]*switchdevPF{}
	// lastInfo is the last PF set up, for the report.
	lastInfo *SwitchdevInfo
)

// LastSwitchdev returns the description of the last PF a topology ran on,
// nil if none did.
func LastSwitchdev() *SwitchdevInfo {
	pfsMu.Lock()
	defer pfsMu.Unlock()
	if lastInfo == nil {
		return nil
	}
	c := *lastInfo
	return &c
}

// acquirePF prepares pf (once for concurrent topologies) and registers its
// release with t.
func acquirePF(t testing.TB, name string) (*switchdevPF, error) {
	pfsMu.Lock()
	defer pfsMu.Unlock()
	p := pfs[name]
	if p == nil {
		var err error
		if p, err = setupPF(name); err != nil {
			return nil, err
		}
		pfs[name] = p
		info := p.info
		lastInfo = &info
	}
	p.refs++
	t.Cleanup(func() {
		pfsMu.Lock()
		defer pfsMu.Unlock()
		p.refs--
		if p.refs > 0 {
			return
		}
		delete(pfs, name)
		if err := p.restore(); err != nil {
			t.Errorf("restore PF %s: %v", p.name, err)
		}
	})
	return p, nil
}

func vfCount() int {
	if n, err := strconv.Atoi(os.Getenv(VFsEnv)); err == nil && n > 0 {
		return n
	}
	return defaultVFs
}

func setupPF(name string) (p *switchdevPF, err error) {
	p = &switchdevPF{name: name, nsimID: -1, taken: map[int]bool{}}
	if p.host, err = netns.Get(); err != nil {
		return nil, err
	}
	if name == NetdevsimPF {
		if err := p.newNetdevsim(); err != nil {
			return nil, err
		}
	}
	// A failed setup undoes what it did.
	defer func() {
		if err != nil {
			if rerr := p.restore(); rerr != nil {
				err = fmt.Errorf("%w (and restoring: %w)", err, rerr)
			}
		}
	}()
	if err := p.inspect(); err != nil {
		return p, err
	}
	if p.info.OldNumVFs > 0 {
		if err := p.refuseInUse(); err != nil {
			return p, err
		}
	} else {
		p.info.Kubelet = "no VFs before the run: none can be a pod's"
	}
	if p.info.OldNumVFs == 0 {
		n := vfCount()
		if total, err := readInt(filepath.Join(p.devDir, "sriov_totalvfs")); err == nil && total < n {
			n = total
		}
		if err := os.WriteFile(filepath.Join(p.devDir, "sriov_numvfs"), []byte(strconv.Itoa(n)), 0o200); err != nil {
			return p, fmt.Errorf("create %d VFs on %s (sriov_numvfs): %w", n, p.name, err)
		}
		p.createdVFs = true
		p.info.NumVFs = n
	} else {
		p.info.NumVFs = p.info.OldNumVFs
	}
	if p.info.OldMode != "switchdev" {
		if err := p.refuseModeChange(); err != nil {
			return p, err
		}
		if err := p.setMode("switchdev"); err != nil {
			return p, err
		}
		p.changedMode = true
	}
	p.info.Mode = "switchdev"
	if err := p.findVFs(); err != nil {
		return p, err
	}
	p.info.Preflight = preflight.Inspect(context.Background(), preflight.NewSystem(), []string{p.name}, preflight.Options{}).PFs[0]
	p.info.HWTCOffload = p.info.Preflight.Uplink.HWTCOffload
	return p, nil
}

// newNetdevsim creates a netdevsim device with one port, legacy mode and
// no VFs, as a NIC fresh from boot, and makes its port the PF.
func (p *switchdevPF) newNetdevsim() error {
	for id := 90; id < 100; id++ {
		dev := filepath.Join(nsimBus, "devices", fmt.Sprintf("netdevsim%d", id))
		if _, err := os.Stat(dev); err == nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(nsimBus, "new_device"), []byte(fmt.Sprintf("%d 1", id)), 0o200); err != nil {
			return fmt.Errorf("netdevsim new_device %d: %w", id, err)
		}
		p.nsimID = id
		var ents []os.DirEntry
		deadline := time.Now().Add(5 * time.Second)
		for len(ents) == 0 && time.Now().Before(deadline) {
			ents, _ = os.ReadDir(filepath.Join(dev, "net"))
			if len(ents) == 0 {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if len(ents) != 1 {
			return fmt.Errorf("netdevsim%d: want one port netdev, have %d", id, len(ents))
		}
		p.name = ents[0].Name()
		// netdevsim allows 4 VFs unless told otherwise.
		maxVFs := fmt.Sprintf("/sys/kernel/debug/netdevsim/netdevsim%d/max_vfs", id)
		if err := os.WriteFile(maxVFs, []byte(strconv.Itoa(vfCount())), 0o600); err != nil {
			return fmt.Errorf("netdevsim%d max_vfs: %w", id, err)
		}
		return nil
	}
	return errors.New("no free netdevsim id in 90-99")
}

// inspect reads what the PF is: its device, bus, driver, firmware, VFs and
// eswitch mode, and refuses what is not a PF.
func (p *switchdevPF) inspect() error {
	link, err := netlink.LinkByName(p.name)
	if err != nil {
		return fmt.Errorf("PF %s: %w", p.name, err)
	}
	if p.devDir, err = filepath.EvalSymlinks(filepath.Join(sysClassNet, p.name, "device")); err != nil {
		return fmt.Errorf("PF %s has no device (a virtual netdev?): %w", p.name, err)
	}
	if _, err := os.Stat(filepath.Join(p.devDir, "physfn")); err == nil {
		return fmt.Errorf("%s is a VF, not a PF: give the PF's uplink netdev", p.name)
	}
	if p.info.OldNumVFs, err = readInt(filepath.Join(p.devDir, "sriov_numvfs")); err != nil {
		return fmt.Errorf("%s is not an SR-IOV PF (no sriov_numvfs): %w", p.name, err)
	}
	sub, err := filepath.EvalSymlinks(filepath.Join(p.devDir, "subsystem"))
	if err != nil {
		return fmt.Errorf("bus of %s: %w", p.devDir, err)
	}
	drv, _ := filepath.EvalSymlinks(filepath.Join(p.devDir, "driver"))
	p.info.PF, p.info.Bus, p.info.Device, p.info.Driver = p.name, filepath.Base(sub), filepath.Base(p.devDir), filepath.Base(drv)
	p.info.Wired = p.info.Bus == "netdevsim"
	if di, err := drvinfo(p.name); err == nil {
		p.info.DriverVersion, p.info.Firmware, p.info.BusInfo = di[0], di[1], di[2]
		if p.info.Driver == "" || p.info.Driver == "." {
			p.info.Driver = di[3]
		}
	}
	dl, err := netlink.DevLinkGetDeviceByName(p.info.Bus, p.info.Device)
	if err != nil {
		return fmt.Errorf("devlink device %s/%s of %s: %w", p.info.Bus, p.info.Device, p.name, err)
	}
	p.info.OldMode = dl.Attrs.Eswitch.Mode
	p.info.Mode = p.info.OldMode
	for _, v := range link.Attrs().Vfs {
		if v.ID < p.info.OldNumVFs {
			p.vfs = append(p.vfs, &vf{n: v.ID, adminMAC: v.Mac, trust: v.Trust != 0, spf: v.Spoofchk})
		}
	}
	for n := len(p.vfs); n < p.info.OldNumVFs; n++ {
		p.vfs = append(p.vfs, &vf{n: n}) // the driver reported no VF info
	}
	return nil
}

func (p *switchdevPF) setMode(mode string) error {
	dl, err := netlink.DevLinkGetDeviceByName(p.info.Bus, p.info.Device)
	if err != nil {
		return fmt.Errorf("devlink device %s/%s: %w", p.info.Bus, p.info.Device, err)
	}
	if dl.Attrs.Eswitch.Mode == mode {
		return nil
	}
	// A PCI driver changes the mode with its VFs unbound (mlx5 refuses
	// otherwise on older kernels); they are bound again afterwards.
	rebind, err := p.unbindVFs()
	if err != nil {
		return err
	}
	serr := netlink.DevLinkSetEswitchMode(dl, mode)
	if serr != nil {
		serr = fmt.Errorf("devlink dev eswitch set %s/%s mode %s: %w", p.info.Bus, p.info.Device, mode, serr)
	}
	return errors.Join(serr, rebind())
}

// unbindVFs unbinds the PF's PCI VFs from their driver and returns the
// function that binds them again.
func (p *switchdevPF) unbindVFs() (func() error, error) {
	var bound [][2]string // pci address, driver
	n, _ := readInt(filepath.Join(p.devDir, "sriov_numvfs"))
	for i := 0; i < n && !p.info.Wired; i++ {
		vfDir, err := filepath.EvalSymlinks(filepath.Join(p.devDir, fmt.Sprintf("virtfn%d", i)))
		if err != nil {
			continue
		}
		drv, err := filepath.EvalSymlinks(filepath.Join(vfDir, "driver"))
		if err != nil {
			continue
		}
		addr := filepath.Base(vfDir)
		if err := os.WriteFile(filepath.Join(drv, "unbind"), []byte(addr), 0o200); err != nil {
			return nil, fmt.Errorf("unbind VF %s from %s: %w", addr, filepath.Base(drv), err)
		}
		bound = append(bound, [2]string{addr, drv})
	}
	return func() error {
		var errs []error
		for _, b := range bound {
			if err := os.WriteFile(filepath.Join(b[1], "bind"), []byte(b[0]), 0o200); err != nil {
				errs = append(errs, fmt.Errorf("bind VF %s to %s: %w", b[0], filepath.Base(b[1]), err))
			}
		}
		return errors.Join(errs...)
	}, nil
}

// findVFs finds every VF's representor and, on a PCI PF, its netdev,
// waiting for them to appear after a mode change.
func (p *switchdevPF) findVFs() error {
	var err error
	if p.switchID, err = readSysNet(p.name, "phys_switch_id"); err != nil {
		return fmt.Errorf("%s has no phys_switch_id in switchdev mode: %w", p.name, err)
	}
	if len(p.vfs) < p.info.NumVFs {
		if link, lerr := netlink.LinkByName(p.name); lerr == nil {
			for _, v := range link.Attrs().Vfs {
				if v.ID >= len(p.vfs) && v.ID < p.info.NumVFs {
					p.vfs = append(p.vfs, &vf{n: v.ID, adminMAC: v.Mac, trust: v.Trust != 0, spf: v.Spoofchk})
				}
			}
		}
		for n := len(p.vfs); n < p.info.NumVFs; n++ {
			p.vfs = append(p.vfs, &vf{n: n})
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		err = p.findVFsOnce()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// representors reads the PF as the agent's preflight does, and maps VF
// number to representor netdev: "" when two netdevs claim the same VF.
func representors(pf string) (preflight.Device, map[int]string, error) {
	dev, err := preflight.NewSystem().Device(pf)
	if err != nil {
		return dev, nil, err
	}
	reps := map[int]string{}
	for _, r := range dev.Representors {
		if _, dup := reps[r.VF]; dup {
			reps[r.VF] = ""
			continue
		}
		reps[r.VF] = r.Name
	}
	return dev, reps, nil
}

func (p *switchdevPF) findVFsOnce() error {
	dev, reps, err := representors(p.name)
	if err != nil {
		return err
	}
	for _, v := range p.vfs {
		r, ok := reps[v.n]
		if !ok {
			return fmt.Errorf("VF %d of %s has no representor (phys_switch_id %s, phys_port_name pf<N>vf%d)", v.n, p.name, p.switchID, v.n)
		}
		if r == "" {
			return fmt.Errorf("VF %d of %s: two representors share its phys_port_name under switch %s", v.n, p.name, p.switchID)
		}
		v.rep = r
		l, err := netlink.LinkByName(r)
		if err != nil {
			return err
		}
		v.repIndex = l.Attrs().Index
		if p.info.Wired {
			continue
		}
		if v.pci = dev.VFPCI[v.n]; v.pci == "" {
			return fmt.Errorf("VF %d of %s has no virtfn%d in sysfs", v.n, p.name, v.n)
		}
		ents, _ := os.ReadDir(filepath.Join(p.devDir, fmt.Sprintf("virtfn%d", v.n), "net"))
		if len(ents) != 1 {
			return fmt.Errorf("VF %d (%s) of %s has %d netdevs in this network namespace, want 1 (is it bound to %s?)", v.n, v.pci, p.name, len(ents), p.info.Driver)
		}
		v.netdev = ents[0].Name()
	}
	return nil
}

// restore puts the PF back as it was: the eswitch mode, sriov_numvfs, and
// the netdevsim device made for the run deleted.
func (p *switchdevPF) restore() error {
	var errs []error
	if p.attached && !p.createdVFs {
		// VFs taken as they were: their admin MAC, trust and spoof checking
		// (each attach restores its own; this catches a failed one).
		errs = append(errs, p.restoreVFConfig()...)
	}
	if p.createdVFs {
		if err := os.WriteFile(filepath.Join(p.devDir, "sriov_numvfs"), []byte("0"), 0o200); err != nil {
			errs = append(errs, fmt.Errorf("sriov_numvfs back to 0 on %s: %w", p.name, err))
		}
	}
	if p.changedMode {
		if err := p.setMode(p.info.OldMode); err != nil {
			errs = append(errs, err)
		}
	}
	if p.nsimID >= 0 {
		if err := os.WriteFile(filepath.Join(nsimBus, "del_device"), []byte(strconv.Itoa(p.nsimID)), 0o200); err != nil {
			errs = append(errs, fmt.Errorf("delete netdevsim%d: %w", p.nsimID, err))
		}
	}
	_ = p.host.Close()
	return errors.Join(errs...)
}

func (p *switchdevPF) restoreVFConfig() []error {
	link, err := netlink.LinkByName(p.name)
	if err != nil {
		return []error{err}
	}
	var errs []error
	for _, v := range p.vfs {
		if v.adminMAC != nil && !isZeroMAC(v.adminMAC) {
			if err := netlink.LinkSetVfHardwareAddr(link, v.n, v.adminMAC); err != nil {
				errs = append(errs, fmt.Errorf("VF %d MAC back to %s: %w", v.n, v.adminMAC, err))
			}
		}
		if err := netlink.LinkSetVfTrust(link, v.n, v.trust); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			errs = append(errs, fmt.Errorf("VF %d trust back to %v: %w", v.n, v.trust, err))
		}
		if err := netlink.LinkSetVfSpoofchk(link, v.n, v.spf); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			errs = append(errs, fmt.Errorf("VF %d spoof checking back to %v: %w", v.n, v.spf, err))
		}
	}
	return errs
}

// take reserves a free VF for t and returns it; released when t ends.
func (p *switchdevPF) take(t testing.TB, what string) (*vf, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, v := range p.vfs {
		if !p.taken[v.n] {
			p.taken[v.n] = true
			v.what = what
			t.Cleanup(func() {
				p.mu.Lock()
				delete(p.taken, v.n)
				v.what = ""
				p.mu.Unlock()
			})
			return v, nil
		}
	}
	return nil, fmt.Errorf("no free VF of %s left for %s (%d VFs; set %s to create more)", p.name, what, len(p.vfs), VFsEnv)
}

// vfMAC is the MAC the backend gives VF n: locally administered, unicast,
// the same on every run, so that reports compare.
func vfMAC(n int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x6d, 0x6e, 0x70, byte(n >> 8), byte(n)}
}

// attach gives v to a namespace: its eth0 there is the VF's netdev (PCI) or
// a veth end wired to the representor (netdevsim); its representor is
// enslaved to master and up. trusted turns trust on and spoof checking off
// (the uplink's VF carries the remote pods' MACs). Everything is undone
// when t ends.
func (p *switchdevPF) attach(t testing.TB, v *vf, name string, ns netns.NsHandle, nl *netlink.Handle, master int, trusted bool) error {
	pf, err := netlink.LinkByName(p.name)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.attached = true
	p.mu.Unlock()
	mac := vfMAC(v.n)
	if err := netlink.LinkSetVfHardwareAddr(pf, v.n, mac); err != nil {
		return fmt.Errorf("set VF %d MAC %s through %s: %w", v.n, mac, p.name, err)
	}
	t.Cleanup(func() {
		if v.adminMAC != nil && !p.createdVFs {
			if err := netlink.LinkSetVfHardwareAddr(pf, v.n, v.adminMAC); err != nil {
				t.Errorf("VF %d MAC back to %s: %v", v.n, v.adminMAC, err)
			}
		}
	})
	if trusted {
		// Some drivers keep these legacy-mode settings out of switchdev
		// mode (the eswitch's rules decide there): not supported is fine.
		if err := netlink.LinkSetVfTrust(pf, v.n, true); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("trust VF %d on %s: %w", v.n, p.name, err)
		}
		if err := netlink.LinkSetVfSpoofchk(pf, v.n, false); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("spoof checking off for VF %d on %s: %w", v.n, p.name, err)
		}
		t.Cleanup(func() {
			_ = netlink.LinkSetVfTrust(pf, v.n, v.trust)
			_ = netlink.LinkSetVfSpoofchk(pf, v.n, v.spf)
		})
	}
	rep, err := netlink.LinkByName(v.rep)
	if err != nil {
		return err
	}
	qdiscs, err := netlink.QdiscList(rep)
	if err != nil {
		return fmt.Errorf("qdiscs of %s: %w", v.rep, err)
	}
	wasUp := rep.Attrs().Flags&net.FlagUp != 0
	t.Cleanup(func() { p.releaseRep(t, v, qdiscs, wasUp) })
	if p.info.Wired {
		err = p.wire(t, v, name, ns, nl, mac)
	} else {
		err = p.moveVF(t, v, ns, nl, mac)
	}
	if err != nil {
		return err
	}
	if err := netlink.LinkSetMasterByIndex(rep, master); err != nil {
		return fmt.Errorf("enslave representor %s: %w", v.rep, err)
	}
	if err := netlink.LinkSetUp(rep); err != nil {
		return fmt.Errorf("set representor %s up: %w", v.rep, err)
	}
	return nil
}

// moveVF moves the VF's netdev into ns as eth0 with mac; back to the host
// namespace under its own name when t ends.
func (p *switchdevPF) moveVF(t testing.TB, v *vf, ns netns.NsHandle, nl *netlink.Handle, mac net.HardwareAddr) error {
	l, err := netlink.LinkByName(v.netdev)
	if err != nil {
		return fmt.Errorf("VF %d netdev %s: %w", v.n, v.netdev, err)
	}
	oldMAC, wasUp := l.Attrs().HardwareAddr, l.Attrs().Flags&net.FlagUp != 0
	_ = netlink.LinkSetDown(l)
	if err := netlink.LinkSetNsFd(l, int(ns)); err != nil {
		return fmt.Errorf("move VF netdev %s into the pod's namespace: %w", v.netdev, err)
	}
	t.Cleanup(func() {
		l, err := nl.LinkByName("eth0")
		if err != nil {
			l, err = nl.LinkByName(v.netdev)
		}
		if err != nil {
			t.Errorf("VF %d: its netdev is gone from the pod's namespace: %v", v.n, err)
			return
		}
		_ = nl.LinkSetDown(l)
		if err := nl.LinkSetName(l, v.netdev); err != nil {
			t.Errorf("rename VF %d netdev back to %s: %v", v.n, v.netdev, err)
		}
		if oldMAC != nil {
			_ = nl.LinkSetHardwareAddr(l, oldMAC)
		}
		if err := nl.LinkSetNsFd(l, int(p.host)); err != nil {
			t.Errorf("move VF netdev %s back to the host namespace: %v", v.netdev, err)
			return
		}
		if wasUp {
			if l, err := netlink.LinkByName(v.netdev); err == nil {
				_ = netlink.LinkSetUp(l)
			}
		}
	})
	if l, err = nl.LinkByName(v.netdev); err != nil {
		return err
	}
	if err := nl.LinkSetName(l, "eth0"); err != nil {
		return fmt.Errorf("rename VF netdev %s to eth0: %w", v.netdev, err)
	}
	if err := nl.LinkSetHardwareAddr(l, mac); err != nil {
		return fmt.Errorf("set MAC %s on VF %d: %w", mac, v.n, err)
	}
	return nil
}

// wire creates the veth pair vh-<name> (host) ↔ eth0 (in ns) and wires
// vh-<name> to the VF's representor with act_mirred (see the top of this
// file).
func (p *switchdevPF) wire(t testing.TB, v *vf, name string, ns netns.NsHandle, nl *netlink.Handle, mac net.HardwareAddr) error {
	host := "vh-" + name
	if len(host) > 15 {
		return fmt.Errorf("name %q too long for the veth %s", name, host)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns)), PeerHardwareAddr: mac}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", host, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(host); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return err
	}
	// The host end only carries the pod's frames: no addresses, no router
	// solicitations of its own.
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+host+"/disable_ipv6", []byte("1"), 0o644)
	if err := netlink.LinkSetUp(hl); err != nil {
		return err
	}
	if err := netlink.QdiscAdd(&netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: hl.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}); err != nil {
		return fmt.Errorf("clsact on %s: %w", host, err)
	}
	toRep := &netlink.MatchAll{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: hl.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions:     []netlink.Action{&netlink.MirredAction{ActionAttrs: netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN}, MirredAction: netlink.TCA_INGRESS_REDIR, Ifindex: v.repIndex}},
	}
	if err := netlink.FilterAdd(toRep); err != nil {
		return fmt.Errorf("wire %s's ingress to %s's: %w", host, v.rep, err)
	}
	root := netlink.NewPrio(netlink.QdiscAttrs{LinkIndex: v.repIndex, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT})
	if err := netlink.QdiscAdd(root); err != nil {
		return fmt.Errorf("prio qdisc at the root of %s: %w", v.rep, err)
	}
	toPod := &netlink.MatchAll{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: v.repIndex, Parent: netlink.MakeHandle(1, 0), Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions:     []netlink.Action{&netlink.MirredAction{ActionAttrs: netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN}, MirredAction: netlink.TCA_EGRESS_REDIR, Ifindex: hl.Attrs().Index}},
	}
	if err := netlink.FilterAdd(toPod); err != nil {
		return fmt.Errorf("wire what %s transmits to %s: %w", v.rep, host, err)
	}
	return nil
}

// releaseRep takes the representor off the bridge, restores its state and
// deletes the qdiscs it did not have (the driver's clsact, the wiring).
func (p *switchdevPF) releaseRep(t testing.TB, v *vf, had []netlink.Qdisc, wasUp bool) {
	rep, err := netlink.LinkByName(v.rep)
	if err != nil {
		t.Errorf("representor %s of VF %d: %v", v.rep, v.n, err)
		return
	}
	if rep.Attrs().MasterIndex != 0 {
		if err := netlink.LinkSetNoMaster(rep); err != nil {
			t.Errorf("take representor %s off the bridge: %v", v.rep, err)
		}
	}
	if !wasUp {
		_ = netlink.LinkSetDown(rep)
	}
	qs, err := netlink.QdiscList(rep)
	if err != nil {
		t.Errorf("qdiscs of %s: %v", v.rep, err)
		return
	}
	for _, q := range qs {
		if q.Attrs().Parent != netlink.HANDLE_ROOT && q.Attrs().Parent != netlink.HANDLE_CLSACT {
			continue // a child of the root qdisc goes with it
		}
		if hadQdisc(had, q) {
			continue
		}
		if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			t.Errorf("delete qdisc %s of %s: %v", q.Type(), v.rep, err)
		}
	}
}

func hadQdisc(had []netlink.Qdisc, q netlink.Qdisc) bool {
	for _, h := range had {
		if h.Type() == q.Type() && h.Attrs().Handle == q.Attrs().Handle && h.Attrs().Parent == q.Attrs().Parent {
			return true
		}
	}
	return false
}

func readInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

func isZeroMAC(m net.HardwareAddr) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}

// portLabel says what the representor dev stands for in a running
// switchdev topology ("pod a (VF 0)"), "" if it is none's.
func portLabel(dev string) string {
	pfsMu.Lock()
	defer pfsMu.Unlock()
	for _, p := range pfs {
		p.mu.Lock()
		for _, v := range p.vfs {
			if v.rep == dev && v.what != "" {
				p.mu.Unlock()
				return fmt.Sprintf("%s (VF %d)", v.what, v.n)
			}
		}
		p.mu.Unlock()
	}
	return ""
}

// refuseModeChange refuses to switch the eswitch of a PF the host uses:
// the change re-creates the PF's netdev (mlx5 reloads it as the uplink
// representor), which cuts its traffic for seconds and drops its
// configuration.
func (p *switchdevPF) refuseModeChange() error {
	l, err := netlink.LinkByName(p.name)
	if err != nil {
		return err
	}
	var addrs []string
	if as, err := netlink.AddrList(l, netlink.FAMILY_ALL); err == nil {
		for _, a := range as {
			if a.IP.IsGlobalUnicast() {
				addrs = append(addrs, a.IPNet.String())
			}
		}
	}
	if why := pfInUse(masterName(l), addrs); why != "" {
		return fmt.Errorf("PF %s is in eswitch mode %s and %s: switching it to switchdev re-creates its netdev and cuts that traffic; switch it yourself (devlink dev eswitch set %s/%s mode switchdev) or use another PF",
			p.name, p.info.OldMode, why, p.info.Bus, p.info.Device)
	}
	return nil
}

// pfInUse says why the host uses a PF netdev with this master and these
// global addresses, "" if it does not.
func pfInUse(master string, addrs []string) string {
	var why []string
	if master != "" {
		why = append(why, "is enslaved to "+master)
	}
	if len(addrs) > 0 {
		why = append(why, "carries the addresses "+strings.Join(addrs, ", "))
	}
	return strings.Join(why, " and ")
}
