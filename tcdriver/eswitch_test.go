package tcdriver

import (
	"context"
	"fmt"
	randv2 "math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy/policytest"
)

// The eswitch differential: over the random clusters of policytest, every
// network of a scenario is one bridge with one uplink; about two thirds of
// its attachments are local (a VF representor each), the others are pods
// on other nodes, behind the uplink. Probes are new connections in every
// direction: local → local, remote → local (entering by the uplink) and
// local → remote. The eswitch model's verdict must be policy's: a new
// connection from X to Y is delivered iff X's egress allows it and Y's
// ingress allows it (policy.Evaluate for each local end; a remote end is
// enforced by its own node). The reply, and then a second packet of the
// connection (established: the one the hardware CT table can hold), must
// be delivered whenever the connection was.

const eswitchSeed = 20261201

type probeKind int

const (
	localToLocal probeKind = iota
	remoteToLocal
	localToRemote
)

func (k probeKind) String() string {
	return [...]string{"local→local", "remote→local", "local→remote"}[k]
}

// eswitchProbe is one new connection: its first frame enters by in and is
// for the port out (the MAC table knows which).
type eswitchProbe struct {
	kind    probeKind
	in, out string
	first   Packet
	srcMAC  MAC
	want    bool
	why     string
}

// eswitchNet is one scenario network as a bridge.
type eswitchNet struct {
	bridge   *Bridge
	ruleSets map[string]*policy.RuleSet
	devs     []string
	macs     map[MAC]string
	probes   []eswitchProbe
}

type localEnd struct {
	att policy.Attachment
	dev string
	mac MAC
	ips []netip.Addr
}

func addrOf(ips []netip.Addr, v6 bool) (netip.Addr, bool) {
	for _, a := range ips {
		if a.Is6() == v6 {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// eswitchNets builds the bridges of a scenario and their probes.
func eswitchNets(t *testing.T, rng *randv2.Rand, s *policytest.Scenario, sc int) []*eswitchNet {
	eng := s.Engine()
	var out []*eswitchNet
	for ni, n := range s.Networks {
		en := &eswitchNet{bridge: &Bridge{Name: "br-" + n.Ref.Name, Uplinks: []string{"up0"}}, ruleSets: map[string]*policy.RuleSet{},
			devs: []string{"up0"}, macs: map[MAC]string{}}
		var locals []localEnd
		var remotes []netip.Addr
		isLocal := map[netip.Addr]bool{}
		for _, att := range s.Attachments {
			if att.Network != n.Ref {
				continue
			}
			ips := eng.PodIPs(att.PodNamespace, att.PodName, att.Network)
			if rng.IntN(3) == 0 {
				remotes = append(remotes, ips...)
				continue
			}
			rs, _ := eng.Compute(att) // input errors still yield the fail-closed rule set
			if rs == nil {
				t.Fatalf("seed %d scenario %d: no rule set for %s", eswitchSeed, sc, att)
			}
			l := localEnd{att: att, dev: fmt.Sprintf("rep%d", len(locals)), mac: MAC{0x02, 0, 0, 0, byte(ni), byte(1 + len(locals))}, ips: ips}
			locals = append(locals, l)
			for _, a := range ips {
				isLocal[a] = true
			}
			en.bridge.Ports = append(en.bridge.Ports, BridgePort{Dev: l.dev, MAC: net.HardwareAddr(l.mac[:]), RuleSet: rs, IPs: ips})
			en.ruleSets[l.dev] = rs
			en.devs = append(en.devs, l.dev)
			en.macs[l.mac] = l.dev
		}
		if len(locals) == 0 {
			continue
		}
		// A remote end's MAC, behind the uplink: the remote pod's, or the
		// router's for an address off the network.
		remoteMAC := func(a netip.Addr) MAC {
			b := a.As16()
			m := MAC{0x02, 0xfe, b[12], b[13], b[14], b[15]}
			en.macs[m] = "up0"
			return m
		}
		// draw returns a random policy packet whose remote address is of a
		// family every needed end has.
		draw := func(att policy.Attachment, need ...[]netip.Addr) (policy.Packet, bool) {
			for range 20 {
				pp := s.RandomPacket(rng, att)
				ok := true
				for _, ips := range need {
					if _, has := addrOf(ips, pp.Remote.Is6()); !has {
						ok = false
					}
				}
				if ok {
					return pp, true
				}
			}
			return policy.Packet{}, false
		}
		ref := func(l localEnd, d policy.Direction, remote netip.Addr, pp policy.Packet) bool {
			return s.Reference(l.att, policy.Packet{Direction: d, Remote: remote, Protocol: pp.Protocol, Port: pp.Port})
		}
		sport := uint16(30000)
		frame := func(pp policy.Packet, src, dst netip.Addr, dstMAC MAC) Packet {
			sport++
			p := FrameFor(policy.Packet{Direction: policy.Egress, Remote: dst, Protocol: pp.Protocol, Port: pp.Port}, src, sport)
			p.DstMAC = dstMAC
			return p
		}
		remoteAddr := func(pp policy.Packet) (netip.Addr, bool) {
			// Half the time another node's pod, else the generator's
			// address; never a local pod's address.
			if rng.IntN(2) == 0 {
				if a, ok := addrOf(shuffled(rng, remotes), pp.Remote.Is6()); ok {
					return a, true
				}
			}
			return pp.Remote, !isLocal[pp.Remote]
		}
		for _, y := range locals {
			for range 3 {
				pp, ok := draw(y.att, y.ips)
				remote, ok2 := remoteAddr(pp)
				if !ok || !ok2 {
					continue
				}
				dst, _ := addrOf(y.ips, remote.Is6())
				en.probes = append(en.probes, eswitchProbe{kind: remoteToLocal, in: "up0", out: y.dev,
					first: frame(pp, remote, dst, y.mac), srcMAC: remoteMAC(remote), want: ref(y, policy.Ingress, remote, pp),
					why: fmt.Sprintf("%s ingress from %s", y.att, remote)})
			}
			for range 3 {
				pp, ok := draw(y.att, y.ips)
				remote, ok2 := remoteAddr(pp)
				if !ok || !ok2 {
					continue
				}
				src, _ := addrOf(y.ips, remote.Is6())
				en.probes = append(en.probes, eswitchProbe{kind: localToRemote, in: y.dev, out: "up0",
					first: frame(pp, src, remote, remoteMAC(remote)), srcMAC: y.mac, want: ref(y, policy.Egress, remote, pp),
					why: fmt.Sprintf("%s egress to %s", y.att, remote)})
			}
		}
		for range 4 * len(locals) {
			if len(locals) < 2 {
				break
			}
			x, y := locals[rng.IntN(len(locals))], locals[rng.IntN(len(locals))]
			if x.dev == y.dev {
				continue
			}
			pp, ok := draw(x.att, x.ips, y.ips)
			if !ok {
				continue
			}
			src, _ := addrOf(x.ips, pp.Remote.Is6())
			dst, _ := addrOf(y.ips, pp.Remote.Is6())
			out, in := ref(x, policy.Egress, dst, pp), ref(y, policy.Ingress, src, pp)
			en.probes = append(en.probes, eswitchProbe{kind: localToLocal, in: x.dev, out: y.dev,
				first: frame(pp, src, dst, y.mac), srcMAC: x.mac, want: out && in,
				why: fmt.Sprintf("%s egress allows=%v, %s ingress allows=%v", x.att, out, y.att, in)})
		}
		out = append(out, en)
	}
	return out
}

func shuffled(rng *randv2.Rand, a []netip.Addr) []netip.Addr {
	c := append([]netip.Addr(nil), a...)
	rng.Shuffle(len(c), func(i, j int) { c[i], c[j] = c[j], c[i] })
	return c
}

// replyTo is the first reply of p's connection, sent back to srcMAC.
func replyTo(p Packet, srcMAC MAC) Packet {
	r := reply(p)
	r.DstMAC = srcMAC
	switch p.IPProto {
	case ProtoICMP:
		r.ICMPType = 0
	case ProtoICMPv6:
		r.ICMPType = 129
	}
	return r
}

// bridgePlacement applies the bridge on a fresh Fake.
func (en *eswitchNet) bridgePlacement(t *testing.T, prof Profile) *Fake {
	f := NewFake(Options{Profile: prof}, en.devs...)
	if err := f.ApplyBridge(context.Background(), en.bridge); err != nil {
		t.Fatalf("seed %d: %s: ApplyBridge: %v", eswitchSeed, prof.Name, err)
	}
	return f
}

// oldPlacement applies each representor's rule set with Apply (pod egress
// on its ingress hook, pod ingress on its egress hook); the uplink gets
// nothing.
func (en *eswitchNet) oldPlacement(t *testing.T, prof Profile) *Fake {
	f := NewFake(Options{Profile: prof}, en.devs...)
	for _, pt := range en.bridge.Ports {
		if err := f.Apply(context.Background(), pt.Dev, pt.RuleSet); err != nil {
			t.Fatalf("seed %d: %s: Apply %s: %v", eswitchSeed, prof.Name, pt.Dev, err)
		}
	}
	return f
}

// connOutcome is what the model did with the three frames of a probe.
type connOutcome struct {
	first, reply, established EswitchResult
	// replied: the reply and the established packet were sent (the first
	// frame was delivered).
	replied bool
}

func runProbe(t *testing.T, e *Eswitch, mode EswitchMode, pr eswitchProbe) connOutcome {
	e.CT = NewConntrack() // connections never share state
	send := func(in string, p Packet) EswitchResult {
		r, err := e.Send(mode, in, p)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	var o connOutcome
	o.first = send(pr.in, pr.first)
	if o.first.Delivered {
		o.replied = true
		o.reply = send(pr.out, replyTo(pr.first, pr.srcMAC))
		o.established = send(pr.in, pr.first)
	}
	return o
}

// tally counts where frames were decided, per frame and reason.
type tally map[string]int

// pastState counts the filters a frame matched in hardware after a ct
// action other than the established pass: the rules, dispatch and receiver
// sections. A new connection always misses the hardware CT table, so
// they are reached in hardware only by what the hardware CT table holds.
func pastState(r EswitchResult) int {
	n, tracked := 0, false
	for _, f := range r.HardwareHits {
		if tracked && (f.Match.CtStateMask&CtEstablished == 0 || f.Match.CtState&CtEstablished == 0) {
			n++
		}
		for _, a := range f.Actions {
			tracked = tracked || a.Kind == ActCt
		}
	}
	return n
}

func (c tally) add(frame string, r EswitchResult) {
	k := frame + ": " + r.By.String()
	if r.Miss != "" {
		k += " (" + r.Miss + ")"
	}
	c[k]++
}

func (c tally) String() string {
	var out []string
	for k, n := range c {
		out = append(out, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func eswitchScenarios(t *testing.T) [][]*eswitchNet {
	t.Helper()
	t.Logf("seed %d", eswitchSeed)
	rng := randv2.New(randv2.NewPCG(eswitchSeed, 0))
	var out [][]*eswitchNet
	for sc := 0; sc < 60; sc++ {
		// More policies than the default, so that more probes are denied.
		s := policytest.Generate(rng, policytest.Config{Invalid: sc%3 == 0, Policies: 8})
		out = append(out, eswitchNets(t, rng, s, sc))
	}
	return out
}

// TestEswitchAgreesWithPolicy is the differential over the bridge
// placement, for every profile, in software and in hardware.
func TestEswitchAgreesWithPolicy(t *testing.T) {
	scenarios := eswitchScenarios(t)
	total := 0
	perKind := map[probeKind]int{}
	for _, prof := range Profiles {
		for _, mode := range []EswitchMode{EswitchSoftware, EswitchHardware} {
			counts := tally{}
			n, denied, past := 0, 0, 0
			for sc, nets := range scenarios {
				for _, en := range nets {
					f := en.bridgePlacement(t, prof)
					e := NewEswitch(f, prof, en.macs, en.devs...)
					for _, pr := range en.probes {
						o := runProbe(t, e, mode, pr)
						n++
						perKind[pr.kind]++
						if !pr.want {
							denied++
						}
						if o.first.Delivered != pr.want {
							t.Fatalf("seed %d scenario %d %s %s: %s %s from %s: %s; policy allows=%v (%s)\n%s",
								eswitchSeed, sc, prof.Name, mode, pr.kind, pr.first.String(), pr.in, o.first, pr.want, pr.why, dumpPorts(f, pr.in, pr.out))
						}
						counts.add("new", o.first)
						past += pastState(o.first) + pastState(o.reply) + pastState(o.established)
						if o.replied {
							if !o.reply.Delivered || !o.established.Delivered {
								t.Fatalf("seed %d scenario %d %s %s: %s %s: connection delivered but reply %s, established %s",
									eswitchSeed, sc, prof.Name, mode, pr.kind, pr.first.String(), o.reply, o.established)
							}
							counts.add("reply", o.reply)
							counts.add("established", o.established)
						}
					}
				}
			}
			total += n
			if past != 0 {
				// docs/performance.md ("Bridge placement") relies on it: the
				// rules and receiver sections decide nothing in hardware.
				t.Errorf("%s %s: %d filters past the conntrack state matched in hardware", prof.Name, mode, past)
			}
			if denied == 0 || denied == n {
				t.Fatalf("%s %s: %d of %d probes denied: too weak", prof.Name, mode, denied, n)
			}
			t.Logf("%s %s: %d probes (%d denied), all as policy; filters matched in hardware past the conntrack state: %d; %s", prof.Name, mode, n, denied, past, counts)
		}
	}
	t.Logf("%d probes in all (%s %d, %s %d, %s %d)", total, localToLocal, perKind[localToLocal],
		remoteToLocal, perKind[remoteToLocal], localToRemote, perKind[localToRemote])
	if total < 5000 || perKind[localToLocal] == 0 || perKind[remoteToLocal] == 0 || perKind[localToRemote] == 0 {
		t.Fatalf("too weak: %d probes, per kind %v", total, perKind)
	}
}

func dumpPorts(f *Fake, devs ...string) string {
	var b strings.Builder
	for _, d := range devs {
		st, _ := f.Dump(context.Background(), d)
		fmt.Fprintf(&b, "== %s\n%s\n", d, st.Canonical())
	}
	return b.String()
}

// TestEswitchReplyToEgressOnlyPod: a pod whose egress is isolated and
// ingress open accepts a connection from a local pod that isolates
// nothing; its reply must be recognised as established. It needs the
// sender's port to commit the connection even though no pod on the bridge
// isolates ingress (found by TestEswitchAgreesWithPolicy, scenario 4).
func TestEswitchReplyToEgressOnlyPod(t *testing.T) {
	net1 := policy.NetworkRef{Namespace: "ns", Name: "net1"}
	client := &policy.RuleSet{Attachment: policy.Attachment{PodNamespace: "ns", PodName: "client", Network: net1}}
	server := &policy.RuleSet{Attachment: policy.Attachment{PodNamespace: "ns", PodName: "server", Network: net1},
		Egress: policy.DirectionRules{Isolated: true, Stateful: true}}
	clientMAC, serverMAC := MAC{2, 0, 0, 0, 0, 1}, MAC{2, 0, 0, 0, 0, 2}
	en := &eswitchNet{bridge: &Bridge{Name: "br0", Uplinks: []string{"up0"}, Ports: []BridgePort{
		{Dev: "rep1", MAC: net.HardwareAddr(clientMAC[:]), RuleSet: client},
		{Dev: "rep2", MAC: net.HardwareAddr(serverMAC[:]), RuleSet: server},
	}}, devs: []string{"up0", "rep1", "rep2"}, macs: map[MAC]string{clientMAC: "rep1", serverMAC: "rep2"}}
	pr := eswitchProbe{in: "rep1", out: "rep2", srcMAC: clientMAC, want: true, first: Packet{EthType: EthIPv4, DstMAC: serverMAC,
		Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), IPProto: ProtoTCP, SrcPort: 40000, DstPort: 80}}
	for _, prof := range Profiles {
		for _, mode := range []EswitchMode{EswitchSoftware, EswitchHardware} {
			f := en.bridgePlacement(t, prof)
			o := runProbe(t, NewEswitch(f, prof, en.macs, en.devs...), mode, pr)
			if !o.first.Delivered || !o.reply.Delivered || !o.established.Delivered {
				t.Errorf("%s %s: first %s; reply %s; established %s", prof.Name, mode, o.first, o.reply, o.established)
			}
		}
	}
}

// TestEswitchPessimisticLeaks runs the bridge placement under the
// pessimistic hazard (a hardware CT miss forwarded by the hardware bridge
// with no software verdict) and reports what leaks: denied new
// connections delivered. It does not fail on the leak, which the design
// predicts exactly: every IP frame's first action on every port that
// carries a verdict is a ct action (the classify chain of the sender
// section, or of the receiver's whole pipeline behind the uplink's
// dispatch), taken before any rule so that replies are recognised; a new
// connection is never in the hardware CT table; so every denied new
// connection misses there and is bridged, in every direction — except
// ICMPv6 (see below). Allowed connections
// are delivered; their replies too, except where a reply reaches software
// before any ct action: software never committed the connection, so the
// reply is new to the replier's egress rules (counted as broken).
func TestEswitchPessimisticLeaks(t *testing.T) {
	scenarios := eswitchScenarios(t)
	for _, prof := range []Profile{ProfileMLX561, ProfileMLX563} {
		leaks, denied, expected := map[probeKind]int{}, map[probeKind]int{}, map[probeKind]int{}
		how, broken := tally{}, tally{}
		n := 0
		for sc, nets := range scenarios {
			for _, en := range nets {
				e := NewEswitch(en.bridgePlacement(t, prof), prof, en.macs, en.devs...)
				for _, pr := range en.probes {
					o := runProbe(t, e, EswitchHardwarePessimistic, pr)
					n++
					switch {
					case !pr.want:
						denied[pr.kind]++
						expected[pr.kind]++
						// The one exception: ICMPv6 goes first to the
						// neighbour discovery check of the first section on
						// the port (the sender's, open or isolated, on its
						// port; the receiver's ingress behind the uplink's
						// dispatch, when it isolates ingress), which matches
						// ICMP types, software only on both mlx5 profiles: a
						// chain miss before any ct action, so software
						// decides.
						first := pr.in != "up0" || en.ruleSets[pr.out].Ingress.Isolated
						predicted := pr.first.IPProto != ProtoICMPv6 || !first
						if o.first.Delivered != predicted {
							t.Errorf("seed %d scenario %d %s pessimistic: denied %s %s: %s; the design predicts delivered=%v",
								eswitchSeed, sc, prof.Name, pr.kind, pr.first.String(), o.first, predicted)
						}
						if !predicted {
							expected[pr.kind]--
						}
						if o.first.Delivered {
							leaks[pr.kind]++
							how.add(pr.kind.String()+" "+ipProtoName(pr.first.IPProto), o.first)
						}
					case !o.first.Delivered:
						t.Fatalf("seed %d scenario %d %s: allowed %s %s: %s", eswitchSeed, sc, prof.Name, pr.kind, pr.first.String(), o.first)
					case !o.reply.Delivered || !o.established.Delivered:
						// The first frame was bridged on a CT miss, so software
						// never committed it; a reply that then reaches
						// software by a chain miss (ICMPv6: the neighbour
						// discovery check needs ICMP type, software only)
						// is judged new by the replier's egress rules.
						broken.add(pr.kind.String()+" "+ipProtoName(pr.first.IPProto)+" reply", o.reply)
					}
				}
			}
		}
		for _, k := range []probeKind{localToLocal, remoteToLocal, localToRemote} {
			if denied[k] == 0 || leaks[k] != expected[k] {
				t.Errorf("%s pessimistic %s: %d of %d denied new connections leaked; the design predicts %d", prof.Name, k, leaks[k], denied[k], expected[k])
			}
		}
		t.Logf("%s pessimistic: %d probes; leaked (denied, delivered): %s %d/%d, %s %d/%d, %s %d/%d; how: %s; allowed connections broken: %s", prof.Name, n,
			localToLocal, leaks[localToLocal], denied[localToLocal], remoteToLocal, leaks[remoteToLocal], denied[remoteToLocal],
			localToRemote, leaks[localToRemote], denied[localToRemote], how, broken)
	}
}

// TestEswitchOldPlacementBypassed is the negative control: the
// representor placement (Apply per representor: pod ingress on the egress
// hook) is right on a software bridge, and too permissive in hardware for
// frames to a pod that denies them, from the uplink and from other local
// pods: they are switched to the pod's vport and never cross its egress
// hook. It shows the differential has teeth.
func TestEswitchOldPlacementBypassed(t *testing.T) {
	scenarios := eswitchScenarios(t)
	for _, prof := range []Profile{ProfileMLX561, ProfileMLX563} {
		wrong, denied := map[probeKind]int{}, map[probeKind]int{}
		repliesDropped := 0
		for sc, nets := range scenarios {
			for _, en := range nets {
				e := NewEswitch(en.oldPlacement(t, prof), prof, en.macs, en.devs...)
				for _, pr := range en.probes {
					sw := runProbe(t, e, EswitchSoftware, pr)
					if sw.first.Delivered != pr.want || sw.replied && (!sw.reply.Delivered || !sw.established.Delivered) {
						t.Fatalf("seed %d scenario %d %s: old placement in software: %s %s: %s; reply %s; policy allows=%v (%s)",
							eswitchSeed, sc, prof.Name, pr.kind, pr.first.String(), sw.first, sw.reply, pr.want, pr.why)
					}
					hw := runProbe(t, e, EswitchHardware, pr)
					if !pr.want {
						denied[pr.kind]++
					}
					switch {
					case hw.first.Delivered && !pr.want:
						wrong[pr.kind]++
					case !hw.first.Delivered && pr.want:
						t.Fatalf("seed %d scenario %d %s: old placement in hardware dropped an allowed %s %s: %s",
							eswitchSeed, sc, prof.Name, pr.kind, pr.first.String(), hw.first)
					case hw.replied && !hw.reply.Delivered:
						// The first frame was switched in hardware past the
						// receiver's egress hook, which commits: its reply is
						// then new to the receiver's egress rules.
						repliesDropped++
					}
				}
			}
		}
		if wrong[remoteToLocal] == 0 || wrong[localToLocal] == 0 {
			t.Errorf("%s: the old placement in hardware was never too permissive (%v): the differential has no teeth", prof.Name, wrong)
		}
		t.Logf("%s: old placement in hardware delivered denied new connections: %s %d/%d, %s %d/%d, %s %d/%d; allowed connections whose reply it dropped: %d",
			prof.Name, localToLocal, wrong[localToLocal], denied[localToLocal], remoteToLocal, wrong[remoteToLocal], denied[remoteToLocal],
			localToRemote, wrong[localToRemote], denied[localToRemote], repliesDropped)
	}
}
