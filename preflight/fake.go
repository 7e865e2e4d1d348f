package preflight

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
)

// Fake is a Host for unit tests. The devices are a sysfs tree under a
// temporary directory (sriovtest.NIC.Write makes a ConnectX one,
// AddNetdevsim and AddVirtual add others), read by the same Sysfs code as
// System; devlink, ethtool and rtnetlink state is kept in memory and fails
// as the kernel does: a netdev or devlink device that does not exist is
// ENODEV. A device starts with no devlink eswitch and every netdev with
// hw-tc-offload off.
type Fake struct {
	Sysfs
	Kernel string

	mu        sync.Mutex
	eswitch   map[string]string
	devErr    map[string]error
	params    map[string]map[string]string
	features  map[string]Feature
	kinds     map[string]string
	fdb       map[string]map[string]int
	devlinked map[string]bool
}

var _ Host = (*Fake)(nil)

// NewFake returns a Fake over the sysfs tree at sysRoot (…/sys) on a
// kernel of that release.
func NewFake(sysRoot, kernel string) *Fake {
	return &Fake{Sysfs: Sysfs{Root: sysRoot}, Kernel: kernel,
		eswitch: map[string]string{}, devErr: map[string]error{}, params: map[string]map[string]string{},
		features: map[string]Feature{}, kinds: map[string]string{}, fdb: map[string]map[string]int{}, devlinked: map[string]bool{}}
}

// SetEswitchMode registers the devlink device (pci/0000:3b:00.0) with that
// eswitch mode; "" is a devlink device without eswitch.
func (f *Fake) SetEswitchMode(dl, mode string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devlinked[dl] = true
	f.eswitch[dl] = mode
}

// FailDevlink makes every devlink request for the device fail with err.
func (f *Fake) FailDevlink(dl string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devErr[dl] = err
}

// SetParam sets a devlink parameter of the device.
func (f *Fake) SetParam(dl, name, value string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.params[dl] == nil {
		f.params[dl] = map[string]string{}
	}
	f.params[dl][name] = value
}

// SetTCOffload sets a netdev's hw-tc-offload.
func (f *Fake) SetTCOffload(netdev string, ft Feature) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.features[netdev] = ft
}

// SetOffloadedFDB sets how many FDB entries of port on bridge are
// offloaded.
func (f *Fake) SetOffloadedFDB(bridge, port string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fdb[bridge] == nil {
		f.fdb[bridge] = map[string]int{}
	}
	f.fdb[bridge][port] = n
}

// KernelRelease implements Host.
func (f *Fake) KernelRelease() string { return f.Kernel }

func (f *Fake) exists(netdev string) bool {
	_, err := os.Stat(f.path("class/net", netdev))
	return err == nil
}

// LinkKind implements Host.
func (f *Fake) LinkKind(netdev string) (string, error) {
	if !f.exists(netdev) {
		return "", fmt.Errorf("netdev %s: %w", netdev, syscall.ENODEV)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.kinds[netdev], nil
}

func (f *Fake) devlink(dl DevlinkHandle) error {
	if err := f.devErr[dl.String()]; err != nil {
		return fmt.Errorf("devlink device %s: %w", dl, err)
	}
	if !f.devlinked[dl.String()] {
		return devlinkError(dl, syscall.ENODEV)
	}
	return nil
}

// EswitchMode implements Host.
func (f *Fake) EswitchMode(dl DevlinkHandle) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.devlink(dl); err != nil {
		return "", err
	}
	return f.eswitch[dl.String()], nil
}

// DevlinkParam implements Host.
func (f *Fake) DevlinkParam(dl DevlinkHandle, name string) (string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.devlink(dl); err != nil {
		return "", false, fmt.Errorf("%w: parameters", err)
	}
	v, ok := f.params[dl.String()][name]
	return v, ok, nil
}

// TCOffload implements Host.
func (f *Fake) TCOffload(netdev string) (Feature, error) {
	if !f.exists(netdev) {
		return Feature{}, fmt.Errorf("netdev %s: ethtool features: %w", netdev, syscall.ENODEV)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if ft, ok := f.features[netdev]; ok {
		return ft, nil
	}
	return Feature{Changeable: true}, nil
}

// OffloadedFDB implements Host.
func (f *Fake) OffloadedFDB(bridge string) (map[string]int, error) {
	if !f.exists(bridge) {
		return nil, fmt.Errorf("bridge %s: %w", bridge, syscall.ENODEV)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for p, n := range f.fdb[bridge] {
		out[p] = n
	}
	return out, nil
}

// AddVirtual adds a netdev without device of that kind (veth, dummy;
// bridge gets the bridge/ directory that marks a Linux bridge).
func (f *Fake) AddVirtual(name, kind string) error {
	dir := f.path("devices/virtual/net", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if kind == "bridge" {
		if err := os.MkdirAll(filepath.Join(dir, "bridge"), 0o755); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(f.path("class/net"), 0o755); err != nil {
		return err
	}
	if err := os.Symlink("../../devices/virtual/net/"+name, f.path("class/net", name)); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kinds[name] = kind
	f.features[name] = Feature{} // off [fixed]: no hardware behind it
	return nil
}

// Enslave makes port a port of master, as `ip link set PORT master MASTER`
// shows in sysfs.
func (f *Fake) Enslave(port, master string) error {
	if !f.exists(port) || !f.exists(master) {
		return fmt.Errorf("enslave %s to %s: %w", port, master, syscall.ENODEV)
	}
	return os.Symlink(f.path("class/net", master), f.path("class/net", port, "master"))
}

// RemoveNetdev deletes a netdev from the tree (a representor gone).
func (f *Fake) RemoveNetdev(name string) error {
	target, err := filepath.EvalSymlinks(f.path("class/net", name))
	if err != nil {
		return err
	}
	if err := os.RemoveAll(target); err != nil {
		return err
	}
	return os.Remove(f.path("class/net", name))
}

// AddNetdevsim adds netdevsim device id with one port and vfs VFs in
// switchdev mode, laid out as Linux 6.1 shows it: the device under
// /sys/bus/netdevsim, an uplink eni<id>np1 (phys_port_name p1) and a
// representor eni<id>npf0vf<N> per VF on the uplink's switch id. It
// returns the uplink.
func (f *Fake) AddNetdevsim(id, vfs int) (string, error) {
	dev := fmt.Sprintf("netdevsim%d", id)
	dir := f.path("devices", dev)
	switchID := fmt.Sprintf("%016x", 0x1100+id)
	w := &fakeTree{}
	w.mkdir(f.path("bus/netdevsim/devices"))
	w.mkdir(f.path("bus/netdevsim/drivers/netdevsim"))
	w.mkdir(f.path("class/net"))
	w.mkdir(filepath.Join(dir, "net"))
	w.link("../../../devices/"+dev, f.path("bus/netdevsim/devices", dev))
	w.link("../../bus/netdevsim", filepath.Join(dir, "subsystem"))
	w.link("../../bus/netdevsim/drivers/netdevsim", filepath.Join(dir, "driver"))
	w.file(filepath.Join(dir, "sriov_numvfs"), strconv.Itoa(vfs))
	uplink := fmt.Sprintf("eni%dnp1", id)
	port := func(name, portName string) {
		nd := filepath.Join(dir, "net", name)
		w.mkdir(nd)
		w.link("../../../"+dev, filepath.Join(nd, "device"))
		w.file(filepath.Join(nd, "phys_port_name"), portName)
		w.file(filepath.Join(nd, "phys_switch_id"), switchID)
		w.link("../../devices/"+dev+"/net/"+name, f.path("class/net", name))
	}
	port(uplink, "p1")
	for i := range vfs {
		port(fmt.Sprintf("eni%dnpf0vf%d", id, i), fmt.Sprintf("pf0vf%d", i))
	}
	if w.err != nil {
		return "", w.err
	}
	f.SetEswitchMode("netdevsim/"+dev, "switchdev")
	return uplink, nil
}

// fakeTree keeps the first error of a tree being written.
type fakeTree struct{ err error }

func (w *fakeTree) mkdir(dir string) {
	if w.err == nil {
		w.err = os.MkdirAll(dir, 0o755)
	}
}

func (w *fakeTree) link(target, at string) {
	if w.err == nil {
		w.err = os.Symlink(target, at)
	}
}

func (w *fakeTree) file(path, content string) {
	if w.err == nil {
		w.err = os.WriteFile(path, []byte(content+"\n"), 0o644)
	}
}
