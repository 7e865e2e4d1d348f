package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/preflight"
)

const (
	nsimBus     = "/sys/bus/netdevsim"
	sysClassNet = "/sys/class/net"
)

// Eswitch is a netdevsim device in switchdev mode: an uplink (PF) port and
// one representor per VF, all sharing the uplink's phys_switch_id, as on a
// ConnectX NIC. netdevsim has no datapath between VFs and representors in
// this kernel; traffic tests use Topology (veth pairs) instead.
type Eswitch struct {
	// ID is the netdevsim device number; the devlink handle is
	// netdevsim/netdevsim<ID>.
	ID int
	// Uplink is the uplink netdev and SwitchID its phys_switch_id.
	Uplink, SwitchID string
}

// Representor is a switchdev port netdev.
type Representor struct {
	// Name is the netdev name, PortName its phys_port_name ("pf0vf3").
	Name, PortName string
	// VF is the VF number parsed from PortName, -1 for a non-VF port.
	VF int
}

// DevlinkDevice is the eswitch's devlink device name (bus/device).
func (e *Eswitch) DevlinkDevice() string { return fmt.Sprintf("netdevsim/netdevsim%d", e.ID) }

// NewEswitch creates netdevsim device id with one port and vfs VFs, and
// switches its eswitch to switchdev mode through devlink, which creates a
// representor per VF. The device is deleted when the test ends.
func NewEswitch(t testing.TB, id, vfs int) *Eswitch {
	t.Helper()
	RequireBed(t)
	e, err := newEswitch(id, vfs)
	if e != nil {
		t.Cleanup(func() {
			if err := os.WriteFile(filepath.Join(nsimBus, "del_device"), []byte(strconv.Itoa(id)), 0o200); err != nil {
				t.Errorf("delete netdevsim%d: %v", id, err)
			}
		})
	}
	if err != nil {
		t.Fatalf("netdevsim%d with %d VFs: %v", id, vfs, err)
	}
	return e
}

func newEswitch(id, vfs int) (*Eswitch, error) {
	if err := os.WriteFile(filepath.Join(nsimBus, "new_device"), []byte(fmt.Sprintf("%d 1", id)), 0o200); err != nil {
		return nil, fmt.Errorf("new_device: %w", err)
	}
	e := &Eswitch{ID: id}
	dev := filepath.Join(nsimBus, "devices", fmt.Sprintf("netdevsim%d", id))
	if err := os.WriteFile(filepath.Join(dev, "sriov_numvfs"), []byte(strconv.Itoa(vfs)), 0o200); err != nil {
		return e, fmt.Errorf("sriov_numvfs: %w", err)
	}
	dl, err := netlink.DevLinkGetDeviceByName("netdevsim", fmt.Sprintf("netdevsim%d", id))
	if err != nil {
		return e, fmt.Errorf("devlink device %s: %w", e.DevlinkDevice(), err)
	}
	if err := netlink.DevLinkSetEswitchMode(dl, "switchdev"); err != nil {
		return e, fmt.Errorf("devlink eswitch mode switchdev on %s: %w", e.DevlinkDevice(), err)
	}
	// The uplink is the device's only physical port netdev.
	ports, err := os.ReadDir(filepath.Join(dev, "net"))
	if err != nil {
		return e, fmt.Errorf("list netdevs of %s: %w", dev, err)
	}
	for _, p := range ports {
		name := p.Name()
		portName, _ := readSysNet(name, "phys_port_name")
		if pfPortName.MatchString(portName) {
			e.Uplink = name
		}
	}
	if e.Uplink == "" {
		return e, fmt.Errorf("no uplink port among the netdevs of %s", dev)
	}
	if e.SwitchID, err = readSysNet(e.Uplink, "phys_switch_id"); err != nil {
		return e, fmt.Errorf("uplink %s has no phys_switch_id (not in switchdev mode?): %w", e.Uplink, err)
	}
	return e, nil
}

var pfPortName = regexp.MustCompile(`^p\d+$`)

func readSysNet(netdev, attr string) (string, error) {
	b, err := os.ReadFile(filepath.Join(sysClassNet, netdev, attr))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Representors lists the VF representors of the eswitch, ordered by VF,
// found as the agent's offload preflight finds them: every netdev with
// the uplink's phys_switch_id and a pf<N>vf<M> phys_port_name.
func (e *Eswitch) Representors() ([]Representor, error) {
	dev, err := preflight.NewSystem().Device(e.Uplink)
	if err != nil {
		return nil, err
	}
	reps := make([]Representor, 0, len(dev.Representors))
	for _, r := range dev.Representors {
		reps = append(reps, Representor{Name: r.Name, PortName: r.PortName, VF: r.VF})
	}
	return reps, nil
}

// Representor returns the representor of VF vf.
func (e *Eswitch) Representor(vf int) (Representor, error) {
	reps, err := e.Representors()
	if err != nil {
		return Representor{}, err
	}
	for _, r := range reps {
		if r.VF == vf {
			return r, nil
		}
	}
	return Representor{}, errors.New("no representor for VF " + strconv.Itoa(vf) + " on " + e.DevlinkDevice())
}
