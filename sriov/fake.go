package sriov

import (
	"fmt"
	"net"
	"sort"
	"sync"
)

// Fake is an in-memory embedded switch for unit tests of code that takes a
// Resolver. It keeps the same state a node has (PFs, their mode, VFs and
// representors) and fails the same way SysfsResolver does, wrapping the same
// errors; the namespace test runs one table against both. It is also a
// Topology: netdevs enslaved to bridges, and the MAC each PF reports for
// its VFs. It is safe for concurrent use.
type Fake struct {
	mu      sync.Mutex
	pfs     map[string]fakePF
	vfs     map[string]fakeVF
	devices map[string]bool // every PCI function, PFs and VFs included
	// master maps a netdev to the bridge it is a port of.
	master map[string]string
	// macs are the VFs' MACs as their PF reports them (IFLA_VF_MAC).
	macs map[string]net.HardwareAddr
}

type fakePF struct {
	uplink    string
	switchdev bool
}

type fakeVF struct {
	pf          string
	index       int
	representor string
}

// NewFake returns an empty switch: every address is an unknown device.
func NewFake() *Fake {
	return &Fake{pfs: map[string]fakePF{}, vfs: map[string]fakeVF{}, devices: map[string]bool{},
		master: map[string]string{}, macs: map[string]net.HardwareAddr{}}
}

// AddPF adds a physical function with its uplink netdev. A PF in legacy
// mode (switchdev false) has no uplink representor, so its VFs don't resolve.
func (f *Fake) AddPF(pciAddr, uplink string, switchdev bool) *Fake {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices[pciAddr] = true
	f.pfs[pciAddr] = fakePF{uplink: uplink, switchdev: switchdev}
	return f
}

// AddVF adds VF number index of pfPCI. An empty representor models a VF
// whose representor netdev is missing. It panics on a PF that was not added,
// since that is a broken test, not a state a node can be in.
func (f *Fake) AddVF(pfPCI string, index int, vfPCI, representor string) *Fake {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.pfs[pfPCI]; !ok {
		panic(fmt.Sprintf("sriov.Fake: AddVF %s: PF %s was not added", vfPCI, pfPCI))
	}
	f.devices[vfPCI] = true
	f.vfs[vfPCI] = fakeVF{pf: pfPCI, index: index, representor: representor}
	return f
}

// AddDevice adds a PCI function that is not a VF (a NIC without SR-IOV, a GPU…).
func (f *Fake) AddDevice(pciAddr string) *Fake {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices[pciAddr] = true
	return f
}

// RemoveRepresentor models the representor netdev of a VF disappearing.
func (f *Fake) RemoveRepresentor(vfPCI string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if vf, ok := f.vfs[vfPCI]; ok {
		vf.representor = ""
		f.vfs[vfPCI] = vf
	}
}

// VFs lists the PCI addresses of every VF, sorted.
func (f *Fake) VFs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.vfs))
	for a := range f.vfs {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// Resolve implements Resolver with SysfsResolver's checks, in the same order.
func (f *Fake) Resolve(vfPCI string) (VF, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !pciAddress.MatchString(vfPCI) {
		return VF{}, fmt.Errorf("device %q: %w (want domain:bus:device.function, e.g. 0000:3b:00.2)", vfPCI, ErrInvalidAddress)
	}
	if !f.devices[vfPCI] {
		return VF{}, fmt.Errorf("VF %s: %w", vfPCI, ErrUnknownDevice)
	}
	vf, ok := f.vfs[vfPCI]
	if !ok {
		return VF{}, fmt.Errorf("VF %s: %w: it has no physfn link", vfPCI, ErrNotVF)
	}
	pf := f.pfs[vf.pf]
	if !pf.switchdev {
		return VF{}, fmt.Errorf("VF %s: %w: no netdev of PF %s has a phys_switch_id and phys_port_name pN", vfPCI, ErrNotSwitchdev, vf.pf)
	}
	if vf.representor == "" {
		return VF{}, fmt.Errorf("VF %s: %w for VF %d on uplink %s", vfPCI, ErrNoRepresentor, vf.index, pf.uplink)
	}
	return VF{PCIAddress: vfPCI, PFPCIAddress: vf.pf, Uplink: pf.uplink, Index: vf.index, Representor: vf.representor}, nil
}

// SetMaster enslaves the netdev to the bridge ("": releases it), as
// `ip link set DEV master BRIDGE` does.
func (f *Fake) SetMaster(dev, bridge string) *Fake {
	f.mu.Lock()
	defer f.mu.Unlock()
	if bridge == "" {
		delete(f.master, dev)
	} else {
		f.master[dev] = bridge
	}
	return f
}

// SetVFMAC sets the MAC the VF's PF reports for it, as `ip link set PF vf N
// mac MAC` does (nil: none, all zeros).
func (f *Fake) SetVFMAC(vfPCI string, mac net.HardwareAddr) *Fake {
	f.mu.Lock()
	defer f.mu.Unlock()
	if mac == nil {
		delete(f.macs, vfPCI)
	} else {
		f.macs[vfPCI] = append(net.HardwareAddr(nil), mac...)
	}
	return f
}

// BridgeOf implements Topology. The netdevs the Fake knows are the PFs'
// uplinks, the VFs' representors and every netdev ever enslaved.
func (f *Fake) BridgeOf(dev string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if br, ok := f.master[dev]; ok || f.knows(dev) {
		return br, nil
	}
	return "", fmt.Errorf("netdev %s: %w", dev, ErrNoNetdev)
}

func (f *Fake) knows(dev string) bool {
	for _, pf := range f.pfs {
		if pf.uplink == dev {
			return true
		}
	}
	for _, vf := range f.vfs {
		if vf.representor == dev {
			return true
		}
	}
	return false
}

// BridgePorts implements Topology.
func (f *Fake) BridgePorts(bridge string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for dev, br := range f.master {
		if br == bridge {
			out = append(out, dev)
		}
	}
	sort.Strings(out)
	return out, nil
}

// VFMAC implements Topology: like the kernel, it reports the VF of the
// PF, whatever its representor is called.
func (f *Fake) VFMAC(vf VF) (net.HardwareAddr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.vfs[vf.PCIAddress]
	if !ok || v.pf != vf.PFPCIAddress || v.index != vf.Index {
		return nil, fmt.Errorf("VF %s: PF %s (%s) reports no VF %d", vf.PCIAddress, vf.PFPCIAddress, vf.Uplink, vf.Index)
	}
	if m := f.macs[vf.PCIAddress]; m != nil {
		return append(net.HardwareAddr(nil), m...), nil
	}
	return nil, nil
}

var _ Resolver = (*Fake)(nil)
var _ Topology = (*Fake)(nil)
var _ Resolver = SysfsResolver{}
