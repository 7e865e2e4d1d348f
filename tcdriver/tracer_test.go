package tcdriver

import (
	"context"
	"math/rand"
	"net/netip"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

const dev = "rep0"

// TestTracerMatchesRuleSet installs thousands of random rule sets in the
// fake and requires that the tracer's verdict on new connections equals
// the rule set's own semantics, tagged or not, and that the always-allowed
// and always-dropped frames behave as documented.
func TestTracerMatchesRuleSet(t *testing.T) {
	seed := int64(20261128)
	rng := rand.New(rand.NewSource(seed))
	ctx := context.Background()
	for c := 0; c < 1000; c++ {
		rs := randRuleSet(rng)
		fake := NewFake(Options{}, dev)
		if err := fake.Apply(ctx, dev, rs); err != nil {
			t.Fatalf("seed %d case %d: %v", seed, c, err)
		}
		checkVerdicts(t, fake, rs, rng, 30, "seed", seed, "case", c)
	}
}

func checkVerdicts(t *testing.T, fake *Fake, rs *policy.RuleSet, rng *rand.Rand, n int, ctxInfo ...any) {
	t.Helper()
	for i := 0; i < n; i++ {
		pp, pkt := randPacket(rng)
		h := hookOf(pp.Direction)
		want := rs.Allows(pp)
		for _, tagged := range []bool{false, true} {
			p := pkt
			if tagged {
				p.VLANs = []uint16{Eth8021Q}
			}
			got := Trace(fake.Filters(dev, h), h, p, NewConntrack())
			if (got.Verdict == Pass) != want {
				st, _ := fake.Dump(context.Background(), dev)
				t.Fatalf("%v: packet %+v (%s, tagged=%v) on %s: tracer %s, rule set allows=%v\nrule set: %+v\n%s",
					ctxInfo, pp, p.String(), tagged, h, got, want, rs, st.Canonical())
			}
		}
	}
}

func TestAlwaysAllowedAndAlwaysDropped(t *testing.T) {
	rs := &policy.RuleSet{Ingress: policy.DirectionRules{Isolated: true, Stateful: true},
		Egress: policy.DirectionRules{Isolated: true, Stateful: true}}
	fake := NewFake(Options{}, dev)
	if err := fake.Apply(context.Background(), dev, rs); err != nil {
		t.Fatal(err)
	}
	v4 := Packet{EthType: EthIPv4, Src: netip.MustParseAddr("10.2.0.1"), Dst: podIPv4, IPProto: ProtoTCP, SrcPort: 1000, DstPort: 80}
	cases := []struct {
		name string
		p    Packet
		want Verdict
	}{
		{"arp", Packet{EthType: EthARP}, Pass},
		{"tagged arp", Packet{EthType: EthARP, VLANs: []uint16{Eth8021Q}}, Pass},
		{"neighbour solicitation", Packet{EthType: EthIPv6, IPProto: ProtoICMPv6, ICMPType: 135, Src: podIPv6, Dst: podIPv6}, Pass},
		{"router advertisement", Packet{EthType: EthIPv6, IPProto: ProtoICMPv6, ICMPType: 134, Src: podIPv6, Dst: podIPv6}, Pass},
		{"tagged neighbour advertisement", Packet{EthType: EthIPv6, VLANs: []uint16{Eth8021Q}, IPProto: ProtoICMPv6, ICMPType: 136, Src: podIPv6, Dst: podIPv6}, Pass},
		{"icmpv6 echo without flag", Packet{EthType: EthIPv6, IPProto: ProtoICMPv6, ICMPType: 128, Src: podIPv6, Dst: podIPv6}, Drop},
		{"icmp echo without flag", Packet{EthType: EthIPv4, IPProto: ProtoICMP, ICMPType: 8, Src: podIPv4, Dst: podIPv4}, Drop},
		{"tcp default deny", v4, Drop},
		{"qinq ip", func() Packet { p := v4; p.VLANs = []uint16{Eth8021AD, Eth8021Q}; return p }(), Drop},
		{"double 802.1Q ip", func() Packet { p := v4; p.VLANs = []uint16{Eth8021Q, Eth8021Q}; return p }(), Drop},
		{"unknown ethertype", Packet{EthType: 0x88B5}, Drop},
		{"tagged unknown ethertype", Packet{EthType: 0x88B5, VLANs: []uint16{Eth8021Q}}, Drop},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, h := range Hooks {
				if got := Trace(fake.Filters(dev, h), h, tc.p, NewConntrack()); got.Verdict != tc.want {
					t.Errorf("%s: %s, want %s", h, got, tc.want)
				}
			}
		})
	}
}

// TestAcceptICMPAcceptsEveryType: --accept-icmp/--accept-icmpv6 accept all
// ICMP, as multi-networkpolicy-iptables' flags do, not only echo; other
// protocols are still denied.
func TestAcceptICMPAcceptsEveryType(t *testing.T) {
	d := policy.DirectionRules{Isolated: true, Stateful: true, AcceptICMP: true, AcceptICMPv6: true}
	fake := NewFake(Options{}, dev)
	if err := fake.Apply(context.Background(), dev, &policy.RuleSet{Ingress: d, Egress: d}); err != nil {
		t.Fatal(err)
	}
	icmp := func(t uint8) Packet {
		return Packet{EthType: EthIPv4, IPProto: ProtoICMP, ICMPType: t, Src: podIPv4, Dst: podIPv4}
	}
	icmp6 := func(t uint8) Packet {
		return Packet{EthType: EthIPv6, IPProto: ProtoICMPv6, ICMPType: t, Src: podIPv6, Dst: podIPv6}
	}
	for _, tc := range []struct {
		name string
		p    Packet
		want Verdict
	}{
		{"echo request", icmp(8), Pass},
		{"timestamp request", icmp(13), Pass},
		{"tagged echo request", func() Packet { p := icmp(8); p.VLANs = []uint16{Eth8021Q}; return p }(), Pass},
		{"icmpv6 echo request", icmp6(128), Pass},
		{"icmpv6 node information query", icmp6(139), Pass},
		{"udp still denied", Packet{EthType: EthIPv4, IPProto: ProtoUDP, SrcPort: 1, DstPort: 53, Src: podIPv4, Dst: podIPv4}, Drop},
	} {
		for _, h := range Hooks {
			if got := Trace(fake.Filters(dev, h), h, tc.p, NewConntrack()); got.Verdict != tc.want {
				t.Errorf("%s on %s: %s, want %s", tc.name, h, got, tc.want)
			}
		}
	}
}

// TestRepliesPass: a connection allowed in one direction has its replies
// pass the other hook even when that direction denies everything, and also
// when the allowed direction is not isolated at all (its hook only
// commits).
func TestRepliesPass(t *testing.T) {
	allowAll := policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{{AnyPeer: true}}}
	denyAll := policy.DirectionRules{Isolated: true, Stateful: true}
	open := policy.DirectionRules{}
	out := Packet{EthType: EthIPv4, Src: podIPv4, Dst: netip.MustParseAddr("10.2.0.9"), IPProto: ProtoUDP, SrcPort: 4000, DstPort: 53}
	for _, tc := range []struct {
		name            string
		ingress, egress policy.DirectionRules
	}{
		{"egress allowed, ingress deny-all", denyAll, allowAll},
		{"egress open, ingress deny-all", denyAll, open},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := NewFake(Options{}, dev)
			rs := &policy.RuleSet{Ingress: tc.ingress, Egress: tc.egress}
			if err := fake.Apply(context.Background(), dev, rs); err != nil {
				t.Fatal(err)
			}
			ct := NewConntrack()
			if got := Trace(fake.Filters(dev, HookIngress), HookIngress, out, ct); got.Verdict != Pass {
				t.Fatalf("request: %s", got)
			}
			if got := Trace(fake.Filters(dev, HookEgress), HookEgress, reply(out), ct); got.Verdict != Pass {
				t.Fatalf("reply: %s", got)
			}
			// An unrelated inbound packet is still dropped.
			in := reply(out)
			in.SrcPort = 5353
			if got := Trace(fake.Filters(dev, HookEgress), HookEgress, in, ct); got.Verdict != Drop {
				t.Fatalf("unsolicited inbound: %s", got)
			}
		})
	}
}

// TestSuccessiveAppliesStayExact applies random rule sets one after the
// other on the same representor (in-place updates and generation switches)
// and checks the verdicts and that nothing stale remains.
func TestSuccessiveAppliesStayExact(t *testing.T) {
	seed := int64(7)
	rng := rand.New(rand.NewSource(seed))
	fake := NewFake(Options{}, dev)
	ctx := context.Background()
	rs := randRuleSet(rng)
	for step := 0; step < 500; step++ {
		next := mutate(rng, rs)
		if err := fake.Apply(ctx, dev, next); err != nil {
			t.Fatalf("seed %d step %d: %v", seed, step, err)
		}
		rs = next
		checkVerdicts(t, fake, rs, rng, 20, "seed", seed, "step", step)
		// What is installed equals a fresh install, handles aside.
		fresh := NewFake(Options{}, dev)
		if err := fresh.Apply(ctx, dev, rs); err != nil {
			t.Fatal(err)
		}
		if a, b := keysOf(fake, fake.opts), keysOf(fresh, fresh.opts); !sameKeys(a, b) {
			st, _ := fake.Dump(ctx, dev)
			st2, _ := fresh.Dump(ctx, dev)
			t.Fatalf("step %d: installed state differs from a fresh install\n%s\nfresh:\n%s", step, st.Canonical(), st2.Canonical())
		}
	}
}

// keysOf returns the installed filters' keys with chains made relative to
// their generation, so that two installs in different slots compare equal.
func keysOf(f *Fake, opts Options) map[string]int {
	out := map[string]int{}
	st, _ := f.Dump(context.Background(), dev)
	for _, flt := range st.Filters {
		c := cloneFilter(flt)
		if opts.owns(c.Chain) {
			c.Chain -= opts.slotBase(opts.slotOf(c.Chain))
		}
		for i := range c.Actions {
			if c.Actions[i].Kind == ActGoto && opts.owns(c.Actions[i].Chain) {
				c.Actions[i].Chain -= opts.slotBase(opts.slotOf(c.Actions[i].Chain))
			}
		}
		out[c.key()]++
	}
	return out
}

func sameKeys(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// mutate returns a copy of rs with a small random change: a peer added or
// removed, a port changed, a rule added or removed, isolation toggled.
func mutate(rng *rand.Rand, rs *policy.RuleSet) *policy.RuleSet {
	n := &policy.RuleSet{Attachment: rs.Attachment, Ingress: copyDir(rs.Ingress), Egress: copyDir(rs.Egress)}
	d := &n.Ingress
	if rng.Intn(2) == 0 {
		d = &n.Egress
	}
	switch k := rng.Intn(10); {
	case k == 0:
		*d = randDirection(rng)
	case len(d.Rules) == 0 || k == 1:
		d.Isolated, d.Stateful = true, true
		d.Rules = append(d.Rules, randDirection(rand.New(rand.NewSource(rng.Int63()))).Rules...)
	default:
		r := &d.Rules[rng.Intn(len(d.Rules))]
		switch {
		case k < 6 && !r.AnyPeer:
			r.Peers = disjoint(append(r.Peers, randPrefix(rng, rng.Intn(3) == 0)))
		case k < 7 && len(r.Peers) > 1:
			r.Peers = r.Peers[1:]
		case k < 9 && len(r.Ports) > 0:
			r.Ports[rng.Intn(len(r.Ports))] = randPort(rng)
		default:
			d.Rules = d.Rules[1:]
		}
	}
	return n
}

func copyDir(d policy.DirectionRules) policy.DirectionRules {
	c := d
	c.Rules = nil
	for _, r := range d.Rules {
		r.Peers = append([]netip.Prefix(nil), r.Peers...)
		r.Ports = append([]policy.PortMatch(nil), r.Ports...)
		c.Rules = append(c.Rules, r)
	}
	return c
}

// TestTrackOnlyHookPassesNonIP: the commit-only hook of a non-isolated
// direction must never drop, ARP included (act_ct drops non-IP).
func TestTrackOnlyHookPassesNonIP(t *testing.T) {
	fake := NewFake(Options{}, dev)
	rs := &policy.RuleSet{Ingress: policy.DirectionRules{Isolated: true, Stateful: true}}
	if err := fake.Apply(context.Background(), dev, rs); err != nil {
		t.Fatal(err)
	}
	for _, p := range []Packet{{EthType: EthARP}, {EthType: 0x88CC}, {EthType: EthARP, VLANs: []uint16{Eth8021Q}}} {
		if got := Trace(fake.Filters(dev, HookIngress), HookIngress, p, NewConntrack()); got.Verdict != Pass {
			t.Errorf("%s: %s", p.String(), got)
		}
	}
}
