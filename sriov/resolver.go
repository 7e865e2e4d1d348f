// Package sriov resolves a VF's PCI address, as the kubelet reports it in
// PodResources, to the switchdev objects the TC driver programs: the PF, its
// uplink representor, the VF index and the VF representor netdev.
package sriov

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/k8snetworkplumbingwg/sriovnet"
)

// VF is one virtual function located in the embedded switch.
type VF struct {
	// PCIAddress is the VF's own address, e.g. 0000:3b:00.2.
	PCIAddress string `json:"vfPCI"`
	// PFPCIAddress is the parent physical function, e.g. 0000:3b:00.0.
	PFPCIAddress string `json:"pfPCI"`
	// Uplink is the PF's uplink representor netdev (phys_port_name p0, p1…).
	Uplink string `json:"uplink"`
	// Index is N in the PF's virtfnN link and in the pfXvfN port name.
	Index int `json:"vfIndex"`
	// Representor is the VF representor netdev the TC rules go on.
	Representor string `json:"representor"`
}

// Resolver locates a VF in the embedded switch. The agent depends on this
// interface only, so its unit tests can use Fake instead of sysfs.
type Resolver interface {
	Resolve(vfPCI string) (VF, error)
}

// Errors a Resolver wraps, so callers can tell a misconfigured node (not
// switchdev) from a device that is simply not a VF.
var (
	ErrInvalidAddress = errors.New("not a PCI address")
	ErrUnknownDevice  = errors.New("no such PCI device")
	ErrNotVF          = errors.New("not a virtual function")
	ErrNotSwitchdev   = errors.New("PF not in switchdev mode")
	ErrNoRepresentor  = errors.New("no representor")
)

// pciAddress is the sysfs form domain:bus:device.function. Checking it first
// also keeps a hostile device ID from walking out of /sys via "..".
var pciAddress = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$`)

// SysfsResolver resolves VFs from /sys with sriovnet. sriovnet reads the
// sysfs paths directly, so tests run it over a fake tree bind-mounted on /sys
// inside a private mount namespace (see sriovtest).
type SysfsResolver struct{}

// NewSysfsResolver returns the resolver that reads the host's /sys.
func NewSysfsResolver() SysfsResolver { return SysfsResolver{} }

// Resolve implements Resolver.
func (SysfsResolver) Resolve(vfPCI string) (VF, error) {
	if !pciAddress.MatchString(vfPCI) {
		return VF{}, fmt.Errorf("device %q: %w (want domain:bus:device.function, e.g. 0000:3b:00.2)", vfPCI, ErrInvalidAddress)
	}
	if _, err := os.Stat(filepath.Join(sriovnet.PciSysDir, vfPCI)); err != nil {
		return VF{}, fmt.Errorf("VF %s: %w: %s does not exist", vfPCI, ErrUnknownDevice, filepath.Join(sriovnet.PciSysDir, vfPCI))
	}
	pf, err := sriovnet.GetPfPciFromVfPci(vfPCI)
	if err != nil {
		return VF{}, fmt.Errorf("VF %s: %w: it has no physfn link", vfPCI, ErrNotVF)
	}
	index, err := sriovnet.GetVfIndexByPciAddress(vfPCI)
	if err != nil {
		return VF{}, fmt.Errorf("VF %s: %w: no virtfnN link of PF %s points to it", vfPCI, ErrNotVF, pf)
	}
	uplink, err := sriovnet.GetUplinkRepresentor(vfPCI)
	if err != nil {
		return VF{}, fmt.Errorf("VF %s: %w: no netdev of PF %s has a phys_switch_id and phys_port_name pN", vfPCI, ErrNotSwitchdev, pf)
	}
	rep, err := sriovnet.GetVfRepresentor(uplink, index)
	if err != nil {
		return VF{}, fmt.Errorf("VF %s: %w for VF %d: no netdev on the switch of uplink %s has phys_port_name pf%svf%d",
			vfPCI, ErrNoRepresentor, index, uplink, pf[len(pf)-1:], index)
	}
	return VF{PCIAddress: vfPCI, PFPCIAddress: pf, Uplink: uplink, Index: index, Representor: rep}, nil
}
