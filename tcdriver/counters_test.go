package tcdriver

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// TestCountersAttributeTrafficToRules sends connections through the fake
// kernel, which counts them on the filters they match as the kernel does,
// and checks CountersOf: each allowed first packet counts on the rule that
// allowed it, ICMP on the flag, and drops in Dropped; replies and
// established packets count on neither.
func TestCountersAttributeTrafficToRules(t *testing.T) {
	ctx := context.Background()
	ingress := policy.DirectionRules{Isolated: true, Stateful: true, AcceptICMP: true, Rules: []policy.Rule{
		{Peers: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}, Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 80, EndPort: 80}}},
		{Peers: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}},
	}}
	rs := &policy.RuleSet{Ingress: ingress}
	fake := NewFake(Options{}, dev)
	if err := fake.Apply(ctx, dev, rs); err != nil {
		t.Fatal(err)
	}
	h := HookFor(policy.Ingress)
	ct := NewConntrack()
	send := func(remote string, proto policy.Protocol, port uint16, want Verdict) {
		t.Helper()
		pp := policy.Packet{Direction: policy.Ingress, Remote: netip.MustParseAddr(remote), Protocol: proto, Port: port}
		res, err := fake.Send(dev, h, FrameFor(pp, podIPv4, 40000), ct)
		if err != nil || res.Verdict != want {
			t.Fatalf("%s %s/%d: %v %v, want %s", remote, proto, port, res, err, want)
		}
	}
	send("10.1.0.5", policy.TCP, 80, Pass)  // rule 0
	send("10.1.0.6", policy.TCP, 80, Pass)  // rule 0
	send("10.2.0.9", policy.UDP, 53, Pass)  // rule 1
	send("10.1.0.5", policy.TCP, 81, Drop)  // no rule
	send("10.9.0.1", policy.SCTP, 80, Drop) // no rule
	send("10.9.0.1", policy.ICMP, 0, Pass)  // --accept-icmp
	// The server's reply, then the connection's next packet: established,
	// counted on no rule.
	first := FrameFor(policy.Packet{Direction: policy.Ingress, Remote: netip.MustParseAddr("10.1.0.5"), Protocol: policy.TCP, Port: 80}, podIPv4, 40000)
	if res, err := fake.Send(dev, HookFor(policy.Egress), reply(first), ct); err != nil || res.Verdict != Pass {
		t.Fatalf("reply: %v %v", res, err)
	}
	if res, err := fake.Send(dev, h, first, ct); err != nil || res.Verdict != Pass {
		t.Fatalf("established: %v %v", res, err)
	}

	st, err := fake.Dump(ctx, dev)
	if err != nil {
		t.Fatal(err)
	}
	c, ok := CountersOf(st, h, &rs.Ingress, Options{})
	if !ok {
		t.Fatal("no active pipeline")
	}
	if !slices.Equal(c.Rules, []uint64{2, 1}) || c.ICMP != 1 || c.Dropped != 2 || c.Allowed() != 4 {
		t.Errorf("counters %+v (allowed %d), want rules [2 1], icmp 1, dropped 2, allowed 4", c, c.Allowed())
	}
	// Egress is not isolated: its pipeline only commits, and counts nothing.
	if c, ok := CountersOf(st, HookFor(policy.Egress), &rs.Egress, Options{}); !ok || c.Allowed() != 0 || c.Dropped != 0 {
		t.Errorf("egress: %+v %v, want an active pipeline with nothing counted", c, ok)
	}
	if _, ok := CountersOf(&State{Dev: dev}, h, &rs.Ingress, Options{}); ok {
		t.Error("an empty device has an active pipeline")
	}
}

// TestCountersCollector: the metrics carry the attachment and the policy
// rule, with the counts the traffic left on the filters; a removed
// representor's series are gone.
func TestCountersCollector(t *testing.T) {
	ctx := context.Background()
	rs := &policy.RuleSet{
		Attachment: policy.Attachment{PodNamespace: "blue", PodName: "server", Network: policy.NetworkRef{Namespace: "blue", Name: "sriov-a"}, Interface: "net1"},
		Ingress: policy.DirectionRules{Isolated: true, Stateful: true, Policies: []string{"blue/allow"}, Rules: []policy.Rule{
			{Peers: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}, Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 80, EndPort: 80}}, Origins: []string{"blue/allow ingress[0]"}},
		}},
	}
	fake := NewFake(Options{}, dev)
	if err := fake.Apply(ctx, dev, rs); err != nil {
		t.Fatal(err)
	}
	ct := NewConntrack()
	for _, tc := range []struct {
		remote string
		port   uint16
	}{{"10.1.0.5", 80}, {"10.1.0.6", 80}, {"10.1.0.7", 80}, {"10.1.0.5", 22}} {
		pp := policy.Packet{Direction: policy.Ingress, Remote: netip.MustParseAddr(tc.remote), Protocol: policy.TCP, Port: tc.port}
		if _, err := fake.Send(dev, HookFor(policy.Ingress), FrameFor(pp, podIPv4, 40000), ct); err != nil {
			t.Fatal(err)
		}
	}
	c := NewCountersCollector(fake, fake, Options{}, nil)
	want := `
# HELP multi_networkpolicy_tc_packets_total Packets our filters decided per attachment and direction: verdict allowed counts the first packets of new connections a rule or --accept-icmp allowed; dropped counts every packet dropped.
# TYPE multi_networkpolicy_tc_packets_total counter
multi_networkpolicy_tc_packets_total{direction="egress",namespace="blue",network="blue/sriov-a",pod="server",verdict="allowed"} 0
multi_networkpolicy_tc_packets_total{direction="egress",namespace="blue",network="blue/sriov-a",pod="server",verdict="dropped"} 0
multi_networkpolicy_tc_packets_total{direction="ingress",namespace="blue",network="blue/sriov-a",pod="server",verdict="allowed"} 3
multi_networkpolicy_tc_packets_total{direction="ingress",namespace="blue",network="blue/sriov-a",pod="server",verdict="dropped"} 1
# HELP multi_networkpolicy_tc_rule_packets_total First packets of new connections allowed by each rule of an isolated direction; rule names the policy rules it came from, or accept-icmp.
# TYPE multi_networkpolicy_tc_rule_packets_total counter
multi_networkpolicy_tc_rule_packets_total{direction="ingress",namespace="blue",network="blue/sriov-a",pod="server",rule="blue/allow ingress[0]"} 3
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if err := fake.Remove(ctx, dev); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c); n != 0 {
		t.Errorf("%d series after Remove, want 0", n)
	}
}
