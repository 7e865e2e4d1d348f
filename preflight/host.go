package preflight

import "errors"

// Host is what Inspect reads of the node. System is the real one; Fake keeps
// the same state in memory over a temporary sysfs tree.
type Host interface {
	// KernelRelease is uname -r, "" when unknown.
	KernelRelease() string
	// Device resolves a PF, named by PCI address or by its uplink netdev,
	// to its device, uplink and VF representors (sysfs).
	Device(pf string) (Device, error)
	// PFOfVF returns the PCI address of the VF's PF; ErrNotVF when the
	// device is no VF (another device plugin's device).
	PFOfVF(vfPCI string) (string, error)
	// LinkKind is the rtnetlink kind of a netdev ("veth", "bridge"; ""
	// for a NIC's own netdev).
	LinkKind(netdev string) (string, error)
	// EswitchMode is the devlink eswitch mode of the device: "legacy",
	// "switchdev", or "" when the device has no eswitch (the kernel
	// answers no mode); ErrNoDevlink when there is no such devlink device.
	EswitchMode(dl DevlinkHandle) (string, error)
	// DevlinkParam returns the driverinit/runtime value of a devlink
	// parameter; ok is false when the device has no such parameter.
	DevlinkParam(dl DevlinkHandle, name string) (value string, ok bool, err error)
	// TCOffload reads the netdev's hw-tc-offload feature (ethtool).
	TCOffload(netdev string) (Feature, error)
	// OffloadedFDB counts, per port of the bridge, the FDB entries the
	// driver marked offloaded (NTF_OFFLOADED).
	OffloadedFDB(bridge string) (map[string]int, error)
}

// Errors a Host wraps.
var (
	// ErrNotVF: PFOfVF's device is not a virtual function.
	ErrNotVF = errors.New("not a virtual function")
	// ErrNoDevlink: the kernel has no devlink device of that name (a
	// driver without devlink), or no devlink at all.
	ErrNoDevlink = errors.New("no devlink device")
)

// DevlinkHandle names a devlink device: bus/name, as devlink(8) spells it
// (pci/0000:3b:00.0, netdevsim/netdevsim1).
type DevlinkHandle struct {
	Bus, Name string
}

func (d DevlinkHandle) String() string {
	if d.Bus == "" {
		return ""
	}
	return d.Bus + "/" + d.Name
}

// Device is a PF as sysfs shows it.
type Device struct {
	// Devlink is the device's devlink handle; zero for a virtual netdev
	// (veth, dummy), which has no device.
	Devlink DevlinkHandle
	// PCI is the PF's PCI address, "" when it is no PCI function.
	PCI string
	// Driver is the device's driver (the driver link), "" for a virtual
	// netdev.
	Driver string
	// NumVFs is sriov_numvfs, -1 when the device has none.
	NumVFs int
	// VFPCI maps a VF index to its PCI address (virtfnN links).
	VFPCI map[int]string
	// Uplink is the PF's netdev (phys_port_name pN in switchdev mode).
	Uplink Netdev
	// Representors are the VF representors on the uplink's switch, with
	// the VF number of their pf<N>vf<M> port name.
	Representors []Representor
}

// Virtual is true for a netdev without a device (veth, dummy, tap).
func (d Device) Virtual() bool { return d.Devlink.Bus == "" }

// Netdev is one network device.
type Netdev struct {
	Name string `json:"name"`
	// PortName and SwitchID are phys_port_name and phys_switch_id, ""
	// when the driver reports none.
	PortName string `json:"portName,omitempty"`
	SwitchID string `json:"switchID,omitempty"`
	// Master is the device this one is enslaved to, "" for none;
	// MasterIsBridge says whether that is a Linux bridge.
	Master         string `json:"master,omitempty"`
	MasterIsBridge bool   `json:"masterIsBridge,omitempty"`
}

// Representor is a VF representor netdev.
type Representor struct {
	Netdev
	VF int `json:"vf"`
}

// Feature is the state of one ethtool feature of a netdev.
type Feature struct {
	// Active: the feature is on.
	Active bool
	// Changeable: the driver lets it be switched (in ethtool's hw set);
	// off and not changeable is "off [fixed]": the device cannot do it.
	Changeable bool
}

func (f Feature) String() string {
	switch {
	case f.Active:
		return "on"
	case f.Changeable:
		return "off"
	default:
		return "off [fixed]"
	}
}
