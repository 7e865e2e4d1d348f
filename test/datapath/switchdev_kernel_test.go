//go:build kernel

package datapath_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// The switchdev port backend on netdevsim (the conformance run's plumbing,
// docs/kernel-test-bed.md): pods and the uplink on VFs of a PF in
// switchdev mode, traffic through the representors, the driver's filters
// on the representors' ingress hooks enforced, and nothing left behind:
// netdevs, their masters, state and qdiscs, the PF's VF settings, network
// namespaces, netdevsim devices, sriov_numvfs and eswitch modes are the
// same before and after.

func hostSnapshot(t *testing.T) string {
	t.Helper()
	s, err := datapath.HostSnapshot("")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func requireSameHost(t *testing.T, before, after string) {
	t.Helper()
	if diff := datapath.SnapshotDiff(before, after); len(diff) > 0 {
		t.Errorf("the switchdev backend left the host changed (- before, + after):\n%s", strings.Join(diff, "\n"))
	}
}

// newNetdevsimPF creates netdevsim device id as a NIC would be found on a
// node: vfs VFs, in mode; it outlives the topologies of the test and is
// deleted at its end. It returns the PF netdev.
func newNetdevsimPF(t *testing.T, id, vfs int, mode string) string {
	t.Helper()
	datapath.RequireBed(t)
	dev := fmt.Sprintf("/sys/bus/netdevsim/devices/netdevsim%d", id)
	if err := os.WriteFile("/sys/bus/netdevsim/new_device", []byte(fmt.Sprintf("%d 1", id)), 0o200); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile("/sys/bus/netdevsim/del_device", []byte(fmt.Sprint(id)), 0o200) })
	if err := os.WriteFile(fmt.Sprintf("/sys/kernel/debug/netdevsim/netdevsim%d/max_vfs", id), []byte("8"), 0o600); err != nil {
		t.Fatal(err)
	}
	if vfs > 0 {
		if err := os.WriteFile(dev+"/sriov_numvfs", []byte(fmt.Sprint(vfs)), 0o200); err != nil {
			t.Fatal(err)
		}
	}
	if mode == "switchdev" {
		datapath.Run(t, "devlink", "dev", "eswitch", "set", fmt.Sprintf("netdevsim/netdevsim%d", id), "mode", "switchdev")
	}
	// Its netdevs are the port and, in switchdev mode, the representors.
	ents, err := os.ReadDir(dev + "/net")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pn, _ := os.ReadFile("/sys/class/net/" + e.Name() + "/phys_port_name")
		if name := strings.TrimSpace(string(pn)); len(name) > 1 && name[0] == 'p' && strings.Trim(name[1:], "0123456789") == "" {
			return e.Name()
		}
	}
	t.Fatalf("netdevsim%d: no port among %v", id, ents)
	return ""
}

// exercise builds a topology on pf with two pods and a remote pod, proves
// traffic, that a filter on a representor's ingress hook decides what the
// pod sends, that tcdriver's bridge placement is enforced and that the
// driver's apply, removal and Cleanup leave the backend's wiring alone.
// It returns a snapshot of the host taken meanwhile.
func exercise(t *testing.T, pf string) string {
	topo := datapath.NewTopology(t, datapath.Options{Bridge: "brs", PF: pf})
	if topo.Switchdev() == nil {
		t.Fatal("not a switchdev topology")
	}
	a := topo.AddPod(t, "sa", datapath.PodOptions{})
	b := topo.AddPod(t, "sb", datapath.PodOptions{})
	r := topo.AddRemotePod(t, "sr", datapath.PodOptions{})
	if a.VF < 0 || b.VF < 0 || topo.Uplink().VF < 0 || a.VF == b.VF {
		t.Fatalf("VFs: a %d, b %d, uplink %d", a.VF, b.VF, topo.Uplink().VF)
	}
	for _, p := range []*datapath.Pod{a, b} {
		sw, _ := os.ReadFile("/sys/class/net/" + p.Rep + "/phys_port_name")
		if want := fmt.Sprintf("vf%d", p.VF); !strings.HasSuffix(strings.TrimSpace(string(sw)), want) {
			t.Errorf("pod %s: representor %s has phys_port_name %q, want …%s", p.Name, p.Rep, sw, want)
		}
	}
	for _, proto := range allProtos {
		a.Expect(t, b.IPv4, proto, 7200, datapath.Delivered)
		a.Expect(t, r.IPv6, proto, 7201, datapath.Delivered)
		r.Expect(t, b.IPv4, proto, 7202, datapath.Delivered)
	}
	// What a pod sends enters its representor's ingress hook.
	clsact(t, a.Rep)
	tcRule(t, "dev "+a.Rep+" ingress prio 10 protocol ip flower ip_proto tcp dst_port 7203 action drop")
	a.Expect(t, b.IPv4, datapath.TCP, 7203, datapath.Dropped)
	a.Expect(t, b.IPv4, datapath.TCP, 7204, datapath.Delivered)
	tc(t, "filter", "del", "dev", a.Rep, "ingress")

	// The bridge placement: b admits a on TCP 80 only.
	drv := newDriver(t, tcdriver.Options{Profile: tcdriver.ProfileMLX561})
	br := bridgeOf(t, topo, map[string]*policy.RuleSet{"sb": {Ingress: policy.DirectionRules{Isolated: true, Stateful: true,
		Rules: []policy.Rule{{Peers: []netip.Prefix{netip.PrefixFrom(a.IPv4, 32)}, Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 80, EndPort: 80}}}}}}})
	if err := drv.ApplyBridge(context.Background(), br); err != nil {
		t.Fatal(err)
	}
	requireNoEgressFilters(t, drv, br)
	a.Expect(t, b.IPv4, datapath.TCP, 80, datapath.Delivered)
	a.Expect(t, b.IPv4, datapath.TCP, 81, datapath.Dropped)
	r.Expect(t, b.IPv4, datapath.TCP, 80, datapath.Dropped)
	if err := drv.RemoveBridge(context.Background(), br.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := tcdriver.Cleanup(context.Background(), drv, []string{a.Rep, b.Rep, topo.Uplink().Dev}, false); err != nil {
		t.Fatal(err)
	}
	// The wiring survived the driver: traffic flows as before.
	a.Expect(t, b.IPv4, datapath.TCP, 81, datapath.Delivered)
	r.Expect(t, b.IPv4, datapath.TCP, 80, datapath.Delivered)
	b.Expect(t, r.IPv4, datapath.UDP, 53, datapath.Delivered)
	during := hostSnapshot(t)
	// The snapshot sees what the backend does, so its equality afterwards
	// means something.
	for _, want := range []string{"link " + a.Rep + " type=device master=brs up=true", "qdisc " + a.Rep + " prio parent=ffffffff",
		"qdisc " + b.Rep + " clsact parent=fffffff1", "link vh-sa type=veth master= up=true", "netns sa",
		fmt.Sprintf("mac=02:6d:6e:70:00:%02x", a.VF)} {
		if !strings.Contains(during, want) {
			t.Errorf("the host snapshot during the run has no %q:\n%s", want, during)
		}
	}
	return during
}

// TestSwitchdevBackendLeavesNothingBehind runs the backend on the three
// kinds of PF it meets and compares the host before and after.
func TestSwitchdevBackendLeavesNothingBehind(t *testing.T) {
	datapath.RequireBed(t)
	t.Run("netdevsim made for the run", func(t *testing.T) {
		before := hostSnapshot(t)
		t.Run("topology", func(t *testing.T) { _ = exercise(t, datapath.NetdevsimPF) })
		requireSameHost(t, before, hostSnapshot(t))
	})
	t.Run("legacy PF without VFs", func(t *testing.T) {
		pf := newNetdevsimPF(t, 61, 0, "legacy")
		before := hostSnapshot(t)
		t.Run("topology", func(t *testing.T) {
			_ = exercise(t, pf)
			if info := datapath.LastSwitchdev(); info.OldMode != "legacy" || info.OldNumVFs != 0 || info.NumVFs == 0 || info.Mode != "switchdev" {
				t.Errorf("PF %+v: want VFs created and the eswitch switched", info)
			}
		})
		requireSameHost(t, before, hostSnapshot(t))
	})
	t.Run("switchdev PF with free VFs", func(t *testing.T) {
		pf := newNetdevsimPF(t, 62, 4, "switchdev")
		l, err := netlink.LinkByName(pf)
		if err != nil {
			t.Fatal(err)
		}
		// Settings of its own the backend must put back.
		if err := netlink.LinkSetVfHardwareAddr(l, 1, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x62}); err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetVfSpoofchk(l, 2, true); err != nil {
			t.Fatal(err)
		}
		before := hostSnapshot(t)
		t.Run("topology", func(t *testing.T) {
			_ = exercise(t, pf)
			if info := datapath.LastSwitchdev(); info.OldNumVFs != 4 || info.NumVFs != 4 || info.OldMode != "switchdev" {
				t.Errorf("PF %+v: want its 4 VFs used as they are", info)
			}
		})
		requireSameHost(t, before, hostSnapshot(t))
	})
}
