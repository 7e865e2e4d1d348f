//go:build kernel

package datapath_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// These tests prove the uplink of the topology (pods of other nodes behind
// it, each with its own MAC) and the bridge placement of tcdriver with real
// packets of every protocol in every direction: pod→pod on the node,
// outside→pod through the uplink, pod→outside.

// TestUplinkRemotePodsOverEveryProtocol: local and remote pods reach each
// other over every protocol and both families, through the uplink, and
// each remote pod answers with its own MAC.
func TestUplinkRemotePodsOverEveryProtocol(t *testing.T) {
	topo := datapath.NewTopology(t, datapath.Options{Bridge: "bru"})
	a := topo.AddPod(t, "a", datapath.PodOptions{})
	r := topo.AddRemotePod(t, "r", datapath.PodOptions{})
	s := topo.AddRemotePod(t, "s", datapath.PodOptions{})
	if !r.Remote || r.Rep != "" || a.Remote {
		t.Fatalf("remote pod %+v / local pod %+v: wrong kinds", r, a)
	}
	if r.MAC.String() == s.MAC.String() || r.MAC.String() == a.MAC.String() {
		t.Fatalf("remote pods share a MAC: r %s, s %s, a %s", r.MAC, s.MAC, a.MAC)
	}
	for _, proto := range allProtos {
		for i, dst := range families(r) {
			res := a.Expect(t, dst, proto, 7000, datapath.Delivered)
			if proto != datapath.ICMP && !res.Reached {
				t.Errorf("%s: delivered but the remote server has no record of it", res)
			}
			s.Expect(t, families(a)[i], proto, 7001, datapath.Delivered)
		}
	}
	// a resolved each remote pod to its own MAC, learnt through the uplink.
	for _, p := range []*datapath.Pod{r, s} {
		out := datapath.Run(t, "ip", "-n", a.Name, "neigh", "show", p.IPv4.String())
		if !containsFold(out, p.MAC.String()) {
			t.Errorf("a's neighbour entry for %s is %q, want MAC %s", p.IPv4, out, p.MAC)
		}
	}
	fdb := datapath.Run(t, "bridge", "fdb", "show", "br", topo.Bridge())
	for _, p := range []*datapath.Pod{r, s} {
		if !containsFold(fdb, p.MAC.String()+" dev "+topo.Uplink().Dev) {
			t.Errorf("the bridge did not learn %s's MAC %s on %s:\n%s", p.Name, p.MAC, topo.Uplink().Dev, fdb)
		}
	}
}

// TestBridgePlacementEveryDirection: ApplyBridge of tcdriver on the local
// pods' representors and the uplink, and for every protocol and family:
// b's ingress admits a (local) and r (remote) only, b's egress reaches s
// (remote) only, c is open. Replies of allowed connections pass; nothing
// is on an egress hook.
func TestBridgePlacementEveryDirection(t *testing.T) {
	topo := datapath.NewTopology(t, datapath.Options{Bridge: "brp"})
	a := topo.AddPod(t, "a", datapath.PodOptions{})
	b := topo.AddPod(t, "b", datapath.PodOptions{})
	c := topo.AddPod(t, "c", datapath.PodOptions{})
	r := topo.AddRemotePod(t, "r", datapath.PodOptions{})
	s := topo.AddRemotePod(t, "s", datapath.PodOptions{})
	hosts := func(ps ...*datapath.Pod) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range ps {
			out = append(out, netip.PrefixFrom(p.IPv4, 32), netip.PrefixFrom(p.IPv6, 128))
		}
		return out
	}
	rules := map[string]*policy.RuleSet{
		"b": {
			Ingress: policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{{Peers: hosts(a, r)}}},
			Egress:  policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{{Peers: hosts(s)}}},
		},
	}
	type want struct {
		from, to *datapath.Pod
		outcome  datapath.Outcome
	}
	wants := []want{
		{a, b, datapath.Delivered}, // pod→pod, allowed by b's ingress
		{c, b, datapath.Dropped},   // pod→pod, denied by b's ingress
		{b, a, datapath.Dropped},   // pod→pod, denied by b's egress
		{c, a, datapath.Delivered}, // pod→pod, nobody isolated
		{r, b, datapath.Delivered}, // outside→pod, allowed
		{s, b, datapath.Dropped},   // outside→pod, denied
		{r, c, datapath.Delivered}, // outside→pod, open
		{b, s, datapath.Delivered}, // pod→outside, allowed
		{b, r, datapath.Dropped},   // pod→outside, denied
		{a, s, datapath.Delivered}, // pod→outside, open
	}
	for _, prof := range []tcdriver.Profile{tcdriver.ProfileSoftware, tcdriver.ProfileMLX561, tcdriver.ProfileMLX563} {
		t.Run(prof.Name, func(t *testing.T) {
			drv := newDriver(t, tcdriver.Options{Profile: prof})
			br := bridgeOf(t, topo, rules)
			if err := drv.ApplyBridge(context.Background(), br); err != nil {
				t.Fatalf("ApplyBridge: %v", err)
			}
			t.Cleanup(func() { _ = drv.RemoveBridge(context.Background(), br.Name) })
			requireNoEgressFilters(t, drv, br)
			if err := netlink.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
				t.Fatalf("flush conntrack: %v", err)
			}
			var probes []datapath.ProbeSpec
			for _, w := range wants {
				for _, proto := range allProtos {
					for i := range 2 {
						probes = append(probes, datapath.ProbeSpec{From: w.from, Dst: families(w.to)[i], Proto: proto, Port: 7100, Want: w.outcome})
					}
				}
			}
			datapath.ExpectAll(t, probes)
			t.Logf("%d probes", len(probes))
		})
	}
}

func newDriver(t *testing.T, opts tcdriver.Options) *tcdriver.TC {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	d, err := tcdriver.New(opts, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

var testNet = policy.NetworkRef{Namespace: "test", Name: "net1"}

// bridgeOf is the tcdriver Bridge of the topology: its uplink and every
// local pod's representor, with the MAC read from the pod's end and the
// pod's rule set (an open one when rules has none).
func bridgeOf(t *testing.T, topo *datapath.Topology, rules map[string]*policy.RuleSet) *tcdriver.Bridge {
	t.Helper()
	br := &tcdriver.Bridge{Name: topo.Bridge()}
	if up := topo.Uplink(); up != nil {
		br.Uplinks = []string{up.Dev}
	}
	for _, p := range topo.LocalPods() {
		mac, err := p.ReadMAC()
		if err != nil {
			t.Fatal(err)
		}
		rs := &policy.RuleSet{}
		if r := rules[p.Name]; r != nil {
			c := *r
			rs = &c
		}
		rs.Attachment = policy.Attachment{PodNamespace: "test", PodName: p.Name, Network: testNet}
		br.Ports = append(br.Ports, tcdriver.BridgePort{Dev: p.Rep, MAC: mac, RuleSet: rs, IPs: p.Addrs()})
	}
	return br
}

// requireNoEgressFilters fails t if any port of the bridge has a filter on
// its egress hook, as the kernel lists them (vishvananda/netlink's own
// parser, not the driver's) and as the driver dumps them.
func requireNoEgressFilters(t *testing.T, drv tcdriver.Driver, br *tcdriver.Bridge) {
	t.Helper()
	devs := append([]string(nil), br.Uplinks...)
	for _, p := range br.Ports {
		devs = append(devs, p.Dev)
	}
	for _, dev := range devs {
		link, err := netlink.LinkByName(dev)
		if err != nil {
			t.Fatal(err)
		}
		fs, err := netlink.FilterList(link, netlink.HANDLE_MIN_EGRESS)
		if err != nil {
			t.Fatalf("list egress filters of %s: %v", dev, err)
		}
		if len(fs) != 0 {
			t.Errorf("%s has %d filters on its egress hook: a verdict there is never taken in hardware", dev, len(fs))
		}
		st, err := drv.Dump(context.Background(), dev)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range st.Filters {
			if f.Hook == tcdriver.HookEgress {
				t.Errorf("%s: filter on the egress hook: %s", dev, f)
			}
		}
	}
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
