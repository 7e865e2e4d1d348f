//go:build kernel

package datapath

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestSwitchdevRefusesAPFWithVFsInUse: a switchdev PF whose VF 0's
// representor is a port of another bridge and whose VF 1's representor
// carries a TC filter is refused, naming both and not VF 2, and is left
// as it was.
func TestSwitchdevRefusesAPFWithVFsInUse(t *testing.T) {
	RequireBed(t)
	e := NewEswitch(t, 63, 3)
	reps, err := e.Representors()
	if err != nil || len(reps) != 3 {
		t.Fatalf("representors %v: %v", reps, err)
	}
	Run(t, "ip", "link", "add", "busy0", "type", "bridge")
	t.Cleanup(func() {
		if l, err := netlink.LinkByName("busy0"); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	Run(t, "ip", "link", "set", reps[0].Name, "master", "busy0")
	Run(t, "tc", "qdisc", "add", "dev", reps[1].Name, "clsact")
	Run(t, "tc", "filter", "add", "dev", reps[1].Name, "ingress", "matchall", "action", "pass")

	_, err = setupPF(e.Uplink)
	var inUse *InUseError
	if !errors.As(err, &inUse) {
		t.Fatalf("want an *InUseError, got %v", err)
	}
	t.Logf("refused: %v", err)
	if w := inUse.Uses[0]; len(w) != 1 || !strings.Contains(w[0], reps[0].Name+" is a port of busy0") {
		t.Errorf("VF 0: %q", w)
	}
	if w := inUse.Uses[1]; len(w) != 1 || !strings.Contains(w[0], "carries 1 TC filters") {
		t.Errorf("VF 1: %q", w)
	}
	if _, ok := inUse.Uses[2]; ok || len(inUse.Uses) != 2 {
		t.Errorf("uses %v: want VFs 0 and 1 only", inUse.Uses)
	}
	if !strings.Contains(err.Error(), "PF "+e.Uplink+" has VFs in use") {
		t.Errorf("error %q does not name the PF", err)
	}
	numvfs, _ := os.ReadFile(fmt.Sprintf("/sys/bus/netdevsim/devices/netdevsim%d/sriov_numvfs", e.ID))
	dl, derr := netlink.DevLinkGetDeviceByName("netdevsim", fmt.Sprintf("netdevsim%d", e.ID))
	if strings.TrimSpace(string(numvfs)) != "3" || derr != nil || dl.Attrs.Eswitch.Mode != "switchdev" {
		t.Errorf("refused PF changed: sriov_numvfs %q, eswitch %v (%v)", numvfs, dl, derr)
	}
	if l, err := netlink.LinkByName(reps[0].Name); err != nil || l.Attrs().MasterIndex == 0 {
		t.Errorf("%s was taken off busy0", reps[0].Name)
	}
}

// TestSwitchdevRefusesToSwitchAPFTheHostUses: a legacy PF with an address
// is not switched to switchdev, and the VFs created before the refusal are
// gone again.
func TestSwitchdevRefusesToSwitchAPFTheHostUses(t *testing.T) {
	RequireBed(t)
	const id = 64
	if err := os.WriteFile(nsimBus+"/new_device", []byte(fmt.Sprintf("%d 1", id)), 0o200); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile(nsimBus+"/del_device", []byte(fmt.Sprint(id)), 0o200) })
	dev := fmt.Sprintf("%s/devices/netdevsim%d", nsimBus, id)
	if err := os.WriteFile(fmt.Sprintf("/sys/kernel/debug/netdevsim/netdevsim%d/max_vfs", id), []byte("8"), 0o600); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(dev + "/net")
	if err != nil || len(ents) != 1 {
		t.Fatalf("netdevsim%d: %v %v", id, ents, err)
	}
	pf := ents[0].Name()
	Run(t, "ip", "addr", "add", "192.0.2.1/24", "dev", pf)

	_, err = setupPF(pf)
	if err == nil || !strings.Contains(err.Error(), "carries the addresses 192.0.2.1/24") || !strings.Contains(err.Error(), "mode legacy") {
		t.Fatalf("want a refusal naming the address and the mode, got %v", err)
	}
	t.Logf("refused: %v", err)
	numvfs, _ := os.ReadFile(dev + "/sriov_numvfs")
	dl, derr := netlink.DevLinkGetDeviceByName("netdevsim", fmt.Sprintf("netdevsim%d", id))
	if strings.TrimSpace(string(numvfs)) != "0" || derr != nil || dl.Attrs.Eswitch.Mode != "legacy" {
		t.Errorf("refused PF changed: sriov_numvfs %q, eswitch %v (%v)", numvfs, dl, derr)
	}
}
