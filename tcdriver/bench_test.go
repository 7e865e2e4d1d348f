package tcdriver

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// thousandRules: 1,000 ingress rules, each with 3 peers and 2 ports.
func thousandRules() *policy.RuleSet {
	rs := &policy.RuleSet{Ingress: policy.DirectionRules{Isolated: true, Stateful: true}}
	for i := 0; i < 1000; i++ {
		var peers []netip.Prefix
		for j := 0; j < 3; j++ {
			peers = append(peers, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i / 250), byte(i % 250), byte(j)}), 32))
		}
		rs.Ingress.Rules = append(rs.Ingress.Rules, policy.Rule{Peers: peers,
			Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: uint16(1000 + i), EndPort: uint16(1000 + i)}, {Protocol: policy.UDP, Port: 53, EndPort: 53}}})
	}
	return rs
}

// BenchmarkCompile1000Rules compiles a 1,000-rule rule set and
// materializes its filters (what Apply does before talking to the kernel).
func BenchmarkCompile1000Rules(b *testing.B) {
	rs := thousandRules()
	b.ReportAllocs()
	var n int
	for b.Loop() {
		p, err := Compile(rs, Options{})
		if err != nil {
			b.Fatal(err)
		}
		n = len(p.Hooks[HookEgress].materialize(DefaultChainBase))
	}
	b.ReportMetric(float64(n), "filters")
}

// BenchmarkFakeIncrementalPeer: one peer added to (or removed from) a
// 1,000-filter pipeline, in place.
func BenchmarkFakeIncrementalPeer(b *testing.B) {
	base := bigRuleSetUnit(480)
	next := bigRuleSetUnit(480)
	next.Ingress.Rules[0].Peers = append(next.Ingress.Rules[0].Peers, netip.MustParsePrefix("172.16.200.1/32"))
	f := NewFake(Options{}, dev)
	ctx := context.Background()
	if err := f.Apply(ctx, dev, base); err != nil {
		b.Fatal(err)
	}
	var ops Stats
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		rs := next
		if i%2 == 1 {
			rs = base
		}
		if err := f.Apply(ctx, dev, rs); err != nil {
			b.Fatal(err)
		}
		ops = f.LastApply()
	}
	b.ReportMetric(float64(ops.Adds+ops.Deletes+ops.Replaces+ops.Flushes), "writes/op")
}

func bigRuleSetUnit(n int) *policy.RuleSet {
	var peers []netip.Prefix
	for i := 0; i < n; i++ {
		peers = append(peers, netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(i / 250), byte(1 + i%250)}), 32))
	}
	return &policy.RuleSet{Ingress: policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{{Peers: peers,
		Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 80, EndPort: 80}, {Protocol: policy.TCP, Port: 443, EndPort: 443}}}}}}
}

func TestIncrementalPeerIsO1(t *testing.T) {
	f := NewFake(Options{}, dev)
	ctx := context.Background()
	if err := f.Apply(ctx, dev, bigRuleSetUnit(480)); err != nil {
		t.Fatal(err)
	}
	next := bigRuleSetUnit(480)
	next.Ingress.Rules[0].Peers = append(next.Ingress.Rules[0].Peers, netip.MustParsePrefix("172.16.200.1/32"))
	if err := f.Apply(ctx, dev, next); err != nil {
		t.Fatal(err)
	}
	if ops := f.LastApply(); ops.Adds != 2 || ops.Deletes+ops.Replaces+ops.Flushes != 0 {
		t.Fatalf("one peer added: %+v, want 2 adds (untagged and 802.1Q) and nothing else", ops)
	}
}

// upstreamFilters is the filter count of the upstream multi-networkpolicy-tc
// pipeline: 2 × IPs × ports per rule (a rule without ports counts one
// "port"), and 4 filters for a default deny.
func upstreamFilters(rs *policy.RuleSet) int {
	n := 0
	for _, d := range []*policy.DirectionRules{&rs.Ingress, &rs.Egress} {
		if !d.Isolated {
			continue
		}
		if len(d.Rules) == 0 {
			n += 4
		}
		for _, r := range d.Rules {
			ips := len(r.Peers)
			if r.AnyPeer {
				ips = 1
			}
			ports := len(r.Ports)
			if ports == 0 {
				ports = 1
			}
			n += 2 * ips * ports
		}
	}
	return n
}

// TestFilterCountTable prints the filter counts of the example scenarios
// next to the upstream formula (copied into docs/performance.md).
func TestFilterCountTable(t *testing.T) {
	names := make([]string, 0, len(goldenRuleSets))
	for n := range goldenRuleSets {
		names = append(names, n)
	}
	sort.Strings(names)
	rows := []string{"| scenario | filters (this driver) | of which 802.1Q variants | without 802.1Q (NoVLAN) | upstream formula |", "|---|---|---|---|---|"}
	extra := map[string]*policy.RuleSet{"1000-rules (3 peers × 2 ports each)": thousandRules(), "1 rule, 50 peers × 10 ports": peersByPorts(50, 10)}
	for _, n := range append(names, "1 rule, 50 peers × 10 ports", "1000-rules (3 peers × 2 ports each)") {
		rs := goldenRuleSets[n]
		if rs == nil {
			rs = extra[n]
		}
		p, err := Compile(rs, Options{})
		if err != nil {
			t.Fatal(err)
		}
		pn, _ := Compile(rs, Options{NoVLAN: true})
		tagged := 0
		for _, f := range p.Filters() {
			if f.Protocol == Eth8021Q {
				tagged++
			}
		}
		rows = append(rows, fmt.Sprintf("| %s | %d | %d | %d | %d |", n, p.FilterCount(), tagged, pn.FilterCount(), upstreamFilters(rs)))
	}
	for _, r := range rows {
		t.Log(r)
	}
}

func peersByPorts(peers, ports int) *policy.RuleSet {
	r := policy.Rule{}
	for i := 0; i < peers; i++ {
		r.Peers = append(r.Peers, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, 0, byte(i)}), 32))
	}
	for i := 0; i < ports; i++ {
		r.Ports = append(r.Ports, policy.PortMatch{Protocol: policy.TCP, Port: uint16(8000 + i), EndPort: uint16(8000 + i)})
	}
	return &policy.RuleSet{Ingress: policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{r}}}
}
