package tcdriver

import (
	"net/netip"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// HookFor returns the representor hook that enforces direction d of its
// pod: what the pod sends (its egress) enters the representor's ingress
// hook, what it receives leaves through the representor's egress hook.
func HookFor(d policy.Direction) Hook {
	if d == policy.Egress {
		return HookIngress
	}
	return HookEgress
}

// FrameFor builds the first frame of the connection pp as the hook
// enforcing its direction sees it. pod is the pod's address (no filter
// matches it; any address of the family does); an ICMP connection starts
// with an echo request.
func FrameFor(pp policy.Packet, pod netip.Addr, srcPort uint16) Packet {
	eth := EthIPv4
	if pp.Remote.Is6() {
		eth = EthIPv6
	}
	p := Packet{EthType: eth, IPProto: pp.Protocol.IPProto(), SrcPort: srcPort, DstPort: pp.Port}
	switch pp.Protocol {
	case policy.ICMP:
		p.IPProto, p.ICMPType, p.SrcPort, p.DstPort = ProtoICMP, 8, 0, 0
	case policy.ICMPv6:
		p.IPProto, p.ICMPType, p.SrcPort, p.DstPort = ProtoICMPv6, 128, 0, 0
	}
	if pp.Direction == policy.Ingress {
		p.Src, p.Dst = pp.Remote, pod
	} else {
		p.Src, p.Dst = pod, pp.Remote
	}
	return p
}
