//go:build kernel

package datapath_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// These tests prove the kernel test bed: real packets between pod
// namespaces through representors and a bridge, stopped and let through by
// flower rules, goto chains and a conntrack pipeline, and netdevsim
// representors found by phys_port_name. TC is driven with the bed's tc.

var allProtos = []datapath.Proto{datapath.TCP, datapath.UDP, datapath.SCTP, datapath.ICMP}

func tc(t *testing.T, args ...string) { t.Helper(); datapath.Run(t, "tc", args...) }

// tcRule installs one filter: "dev DEV egress|ingress [chain N] prio P protocol ip|ipv6 flower ...".
func tcRule(t *testing.T, rule string) {
	t.Helper()
	tc(t, append([]string{"filter", "add"}, strings.Fields(rule)...)...)
}

func clsact(t *testing.T, dev string) { t.Helper(); tc(t, "qdisc", "add", "dev", dev, "clsact") }

// prio returns base for IPv4 rules and base+1 for IPv6 ones: in the kernel
// a (prio, protocol) pair is one classifier, so the families need their own.
func prio(proto string, base int) string {
	if proto == "ipv6" {
		base++
	}
	return fmt.Sprint(base)
}

func families(p *datapath.Pod) []netip.Addr { return []netip.Addr{p.IPv4, p.IPv6} }

func TestPodsReachEachOtherOverEveryProtocol(t *testing.T) {
	topo := datapath.NewTopology(t, datapath.Options{})
	a := topo.AddPod(t, "a", datapath.PodOptions{})
	b := topo.AddPod(t, "b", datapath.PodOptions{})
	for _, proto := range allProtos {
		for _, dst := range families(b) {
			res := a.Expect(t, dst, proto, 7000, datapath.Delivered)
			if proto != datapath.ICMP && !res.Reached {
				t.Errorf("%s: delivered but the server has no record of it", res)
			}
		}
	}
	// Back the other way; and to an address nobody has, nothing is delivered.
	b.Expect(t, a.IPv6, datapath.TCP, 7000, datapath.Delivered)
	for _, proto := range allProtos {
		res := a.Probe(netip.MustParseAddr("10.10.0.99"), proto, 7001)
		if res.Delivered {
			t.Errorf("probe to an address nobody has: %s", res)
		}
	}
}

func TestBridgeVLANsSeparatePods(t *testing.T) {
	topo := datapath.NewTopology(t, datapath.Options{VLANFiltering: true})
	a := topo.AddPod(t, "a", datapath.PodOptions{VLAN: 100})
	b := topo.AddPod(t, "b", datapath.PodOptions{VLAN: 100})
	c := topo.AddPod(t, "c", datapath.PodOptions{VLAN: 200})
	trunk := topo.AddPod(t, "trunk", datapath.PodOptions{Trunk: []uint16{200, 300}})
	if trunk.Iface != "eth0.200" {
		t.Errorf("trunk pod's addresses are on %s, want eth0.200", trunk.Iface)
	}
	for _, dst := range families(b) {
		a.Expect(t, dst, datapath.TCP, 80, datapath.Delivered)
	}
	for _, dst := range families(c) {
		a.Expect(t, dst, datapath.TCP, 80, datapath.Dropped)
		trunk.Expect(t, dst, datapath.TCP, 80, datapath.Delivered)
	}
	a.Expect(t, trunk.IPv4, datapath.UDP, 53, datapath.Dropped)
}

func TestFlowerDropAndPassOnRepresentor(t *testing.T) {
	topo := datapath.NewTopology(t, datapath.Options{})
	a := topo.AddPod(t, "a", datapath.PodOptions{})
	b := topo.AddPod(t, "b", datapath.PodOptions{})
	c := topo.AddPod(t, "c", datapath.PodOptions{})
	for _, dst := range families(b) {
		a.Expect(t, dst, datapath.TCP, 80, datapath.Delivered)
	}

	// The representor's egress is what the pod receives: drop TCP/80 to b.
	clsact(t, b.Rep)
	tcRule(t, "dev "+b.Rep+" egress prio 20 protocol ip flower ip_proto tcp dst_port 80 action drop")
	tcRule(t, "dev "+b.Rep+" egress prio 21 protocol ipv6 flower ip_proto tcp dst_port 80 action drop")
	for _, dst := range families(b) {
		res := a.Expect(t, dst, datapath.TCP, 80, datapath.Dropped)
		if res.Reached {
			t.Errorf("%s: the server saw a dropped connection", res)
		}
		a.Expect(t, dst, datapath.TCP, 81, datapath.Delivered)
		a.Expect(t, dst, datapath.UDP, 80, datapath.Delivered)
		a.Expect(t, dst, datapath.ICMP, 0, datapath.Delivered)
	}

	// A pass of higher priority (lower number) for a's addresses only.
	tcRule(t, fmt.Sprintf("dev %s egress prio 10 protocol ip flower src_ip %s ip_proto tcp action pass", b.Rep, a.IPv4))
	tcRule(t, fmt.Sprintf("dev %s egress prio 11 protocol ipv6 flower src_ip %s ip_proto tcp action pass", b.Rep, a.IPv6))
	for _, dst := range families(b) {
		a.Expect(t, dst, datapath.TCP, 80, datapath.Delivered)
		c.Expect(t, dst, datapath.TCP, 80, datapath.Dropped)
	}

	// The representor's ingress is what the pod sends: c may not send SCTP.
	clsact(t, c.Rep)
	tcRule(t, "dev "+c.Rep+" ingress prio 10 protocol ip flower ip_proto sctp action drop")
	tcRule(t, "dev "+c.Rep+" ingress prio 11 protocol ipv6 flower ip_proto sctp action drop")
	for _, dst := range families(a) {
		c.Expect(t, dst, datapath.SCTP, 9000, datapath.Dropped)
		c.Expect(t, dst, datapath.TCP, 9000, datapath.Delivered)
	}
}

func TestGotoChain(t *testing.T) {
	topo := datapath.NewTopology(t, datapath.Options{})
	a := topo.AddPod(t, "a", datapath.PodOptions{})
	b := topo.AddPod(t, "b", datapath.PodOptions{})
	clsact(t, b.Rep)
	// Chain 0 classifies by protocol, chain 10 decides TCP by port.
	tcRule(t, "dev "+b.Rep+" egress chain 0 prio 10 protocol ip flower ip_proto tcp action goto chain 10")
	tcRule(t, "dev "+b.Rep+" egress chain 0 prio 11 protocol ipv6 flower ip_proto tcp action goto chain 10")
	tcRule(t, "dev "+b.Rep+" egress chain 10 prio 10 protocol ip flower ip_proto tcp dst_port 443 action pass")
	tcRule(t, "dev "+b.Rep+" egress chain 10 prio 11 protocol ipv6 flower ip_proto tcp dst_port 443 action pass")
	tcRule(t, "dev "+b.Rep+" egress chain 10 prio 20 protocol ip flower action drop")
	tcRule(t, "dev "+b.Rep+" egress chain 10 prio 21 protocol ipv6 flower action drop")
	for _, dst := range families(b) {
		a.Expect(t, dst, datapath.TCP, 443, datapath.Delivered)
		a.Expect(t, dst, datapath.TCP, 80, datapath.Dropped)
		a.Expect(t, dst, datapath.UDP, 80, datapath.Delivered) // never enters chain 10
	}
}

// TestConntrackPipeline installs on b's representor the pipeline a policy
// "b accepts no ingress, b's egress is open" compiles to: untracked packets
// go through ct and on to chain 1, established ones pass, new connections
// towards b are dropped, new ones from b are committed.
func TestConntrackPipeline(t *testing.T) {
	topo := datapath.NewTopology(t, datapath.Options{})
	a := topo.AddPod(t, "a", datapath.PodOptions{})
	b := topo.AddPod(t, "b", datapath.PodOptions{})
	// Start from an empty conntrack table: earlier tests share it.
	if err := netlink.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		t.Fatalf("flush conntrack: %v", err)
	}
	clsact(t, b.Rep)
	for _, proto := range []string{"ip", "ipv6"} {
		for _, dir := range []string{"ingress", "egress"} {
			tcRule(t, "dev "+b.Rep+" "+dir+" chain 0 prio "+prio(proto, 1)+" protocol "+proto+" flower ct_state -trk action ct pipe action goto chain 1")
			tcRule(t, "dev "+b.Rep+" "+dir+" chain 1 prio "+prio(proto, 1)+" protocol "+proto+" flower ct_state +trk+est action pass")
		}
		tcRule(t, "dev "+b.Rep+" ingress chain 1 prio "+prio(proto, 3)+" protocol "+proto+" flower ct_state +trk+new action ct commit pipe action pass")
		tcRule(t, "dev "+b.Rep+" egress chain 1 prio "+prio(proto, 3)+" protocol "+proto+" flower ct_state +trk+new action drop")
	}
	for _, proto := range allProtos {
		for i, dst := range families(a) {
			port := uint16(8000 + i)
			// b opens connections to a: the replies come back through b's
			// representor as established.
			res := b.Expect(t, dst, proto, port, datapath.Delivered)
			if proto != datapath.ICMP && !res.Reached {
				t.Errorf("%s: delivered but a's server has no record of it", res)
			}
			// a opens a connection to b: new inbound, dropped before b's server.
			res = a.Expect(t, families(b)[i], proto, port, datapath.Dropped)
			if res.Reached {
				t.Errorf("%s: a new inbound connection reached b's server", res)
			}
		}
	}
	// The pipeline did commit b's connections, and only those (ctnetlink).
	for _, family := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, family)
		if err != nil {
			t.Fatalf("list conntrack: %v", err)
		}
		fromB := 0
		for _, f := range flows {
			switch f.Forward.SrcIP.String() {
			case b.IPv4.String(), b.IPv6.String():
				fromB++
			case a.IPv4.String(), a.IPv6.String():
				t.Errorf("conntrack committed a connection a opened: %s", f)
			}
		}
		if fromB != len(allProtos) {
			t.Errorf("conntrack (family %d) has %d connections from b, want one per protocol (%d):\n%v",
				family, fromB, len(allProtos), flows)
		}
	}
}

func TestNetdevsimRepresentorsByPhysPortName(t *testing.T) {
	esw := datapath.NewEswitch(t, 10, 4)
	reps, err := esw.Representors()
	if err != nil {
		t.Fatal(err)
	}
	if len(reps) != 4 {
		t.Fatalf("found %d representors, want 4: %+v", len(reps), reps)
	}
	for i, r := range reps {
		if r.VF != i || r.PortName != fmt.Sprintf("pf0vf%d", i) {
			t.Errorf("representor %d is %+v, want VF %d with phys_port_name pf0vf%d", i, r, i, i)
		}
	}
	rep2, err := esw.Representor(2)
	if err != nil || rep2 != reps[2] {
		t.Fatalf("Representor(2) = %+v, %v; want %+v", rep2, err, reps[2])
	}
	if _, err := esw.Representor(4); err == nil {
		t.Error("Representor(4) found a representor for a VF that does not exist")
	}
	out := datapath.Run(t, "devlink", "dev", "eswitch", "show", esw.DevlinkDevice())
	if !strings.Contains(out, "mode switchdev") {
		t.Errorf("devlink reports %q, want mode switchdev", out)
	}
	// A software flower rule on a switchdev representor is accepted.
	datapath.Run(t, "ip", "link", "set", rep2.Name, "up")
	clsact(t, rep2.Name)
	tcRule(t, "dev "+rep2.Name+" ingress prio 10 protocol ip flower skip_hw ip_proto tcp dst_port 80 action drop")
	if out := datapath.Run(t, "tc", "filter", "show", "dev", rep2.Name, "ingress"); !strings.Contains(out, "dst_port 80") {
		t.Errorf("the rule is not listed on %s:\n%s", rep2.Name, out)
	}
}
