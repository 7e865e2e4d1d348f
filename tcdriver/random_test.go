package tcdriver

import (
	"math/rand"
	"net/netip"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// Random rule sets and packets for the property tests (unit and kernel).
// Addresses come from small pools so that packets hit and miss peers often.

var (
	podIPv4 = netip.MustParseAddr("10.1.0.1")
	podIPv6 = netip.MustParseAddr("fd00:1::1")
)

func randPrefix(rng *rand.Rand, v6 bool) netip.Prefix {
	if v6 {
		b := [16]byte{0xfd, 0x00, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(rng.Intn(8))}
		return netip.PrefixFrom(netip.AddrFrom16(b), 125+rng.Intn(4)).Masked()
	}
	a := netip.AddrFrom4([4]byte{10, 2, 0, byte(rng.Intn(16))})
	return netip.PrefixFrom(a, 28+rng.Intn(5)).Masked()
}

func randRemote(rng *rand.Rand, v6 bool) netip.Addr {
	if v6 {
		return netip.AddrFrom16([16]byte{0xfd, 0x00, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(rng.Intn(10))})
	}
	return netip.AddrFrom4([4]byte{10, 2, 0, byte(rng.Intn(20))})
}

var protocols = []policy.Protocol{policy.TCP, policy.UDP, policy.SCTP}

func randPort(rng *rand.Rand) policy.PortMatch {
	pm := policy.PortMatch{Protocol: protocols[rng.Intn(3)]}
	switch rng.Intn(4) {
	case 0: // all ports
	case 1, 2:
		pm.Port = uint16(100 + rng.Intn(8))
		pm.EndPort = pm.Port
	default:
		pm.Port = uint16(100 + rng.Intn(8))
		pm.EndPort = pm.Port + uint16(1+rng.Intn(4))
	}
	return pm
}

// disjoint keeps the prefixes that do not overlap an earlier one.
func disjoint(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
next:
	for _, p := range ps {
		for _, q := range out {
			if p.Overlaps(q) {
				continue next
			}
		}
		out = append(out, p)
	}
	return out
}

func randDirection(rng *rand.Rand) policy.DirectionRules {
	d := policy.DirectionRules{Isolated: rng.Intn(4) != 0, Stateful: true}
	if !d.Isolated {
		return d
	}
	d.AcceptICMP = rng.Intn(2) == 0
	d.AcceptICMPv6 = rng.Intn(2) == 0
	for i, n := 0, rng.Intn(4); i < n; i++ {
		var r policy.Rule
		if rng.Intn(5) == 0 {
			r.AnyPeer = true
		} else {
			var ps []netip.Prefix
			for j, m := 0, 1+rng.Intn(4); j < m; j++ {
				ps = append(ps, randPrefix(rng, rng.Intn(3) == 0))
			}
			r.Peers = disjoint(ps)
		}
		if rng.Intn(4) != 0 {
			for j, m := 0, 1+rng.Intn(3); j < m; j++ {
				r.Ports = append(r.Ports, randPort(rng))
			}
		}
		r.Origins = []string{"test/random"}
		d.Rules = append(d.Rules, r)
	}
	return d
}

func randRuleSet(rng *rand.Rand) *policy.RuleSet {
	return &policy.RuleSet{
		Attachment: policy.Attachment{PodNamespace: "test", PodName: "pod", Network: policy.NetworkRef{Namespace: "test", Name: "net"}},
		Ingress:    randDirection(rng),
		Egress:     randDirection(rng),
	}
}

// randPacket returns the first packet of a random new connection and the
// policy view of it.
func randPacket(rng *rand.Rand) (policy.Packet, Packet) {
	v6 := rng.Intn(3) == 0
	pp := policy.Packet{
		Direction: policy.Direction(rng.Intn(2)),
		Remote:    randRemote(rng, v6),
		Protocol:  protocols[rng.Intn(3)],
		Port:      uint16(98 + rng.Intn(14)),
	}
	if rng.Intn(8) == 0 {
		pp.Protocol, pp.Port = policy.ICMP, 0
		if v6 {
			pp.Protocol = policy.ICMPv6
		}
	}
	return pp, toTC(pp, uint16(30000+rng.Intn(1000)))
}

// toTC builds the frame of a policy packet as the hook enforcing its
// direction sees it, with the test pod's address.
func toTC(pp policy.Packet, srcPort uint16) Packet {
	pod := podIPv4
	if pp.Remote.Is6() {
		pod = podIPv6
	}
	return FrameFor(pp, pod, srcPort)
}

// hookOf is the representor hook that enforces a pod direction.
func hookOf(d policy.Direction) Hook { return HookFor(d) }

// reply is the first reply packet of p's connection.
func reply(p Packet) Packet {
	r := p
	r.Src, r.Dst = p.Dst, p.Src
	r.SrcPort, r.DstPort = p.DstPort, p.SrcPort
	return r
}
