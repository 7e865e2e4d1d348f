package tcdriver

import (
	"context"
	"net/netip"
	"slices"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// Flow is the original direction of one conntrack entry.
type Flow struct {
	Zone             uint16
	Proto            uint8
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
}

// ConnCutter removes the conntrack entries of established connections that
// a pod's new rule set denies, so that their next packet is judged by the
// new rules instead of passing as established (act_ct's +est). The agent
// calls it after a rule set changed. It returns how many entries it removed.
type ConnCutter interface {
	Cut(ctx context.Context, podIPs []netip.Addr, rs *policy.RuleSet) (int, error)
}

// Denied reports whether rs denies a new connection like f, which the pod
// at one of podIPs opened (egress) or accepted (ingress). Protocols the
// rules do not name ports for (ICMP…) are left alone, as are entries of
// other zones and entries between two addresses of the pod.
func (f Flow) Denied(zone uint16, podIPs []netip.Addr, rs *policy.RuleSet) bool {
	if f.Zone != zone {
		return false
	}
	var proto policy.Protocol
	switch f.Proto {
	case ProtoTCP:
		proto = policy.TCP
	case ProtoUDP:
		proto = policy.UDP
	case ProtoSCTP:
		proto = policy.SCTP
	default:
		return false
	}
	from, to := slices.Contains(podIPs, f.Src.Unmap()), slices.Contains(podIPs, f.Dst.Unmap())
	switch {
	case from && !to:
		return !rs.Allows(policy.Packet{Direction: policy.Egress, Remote: f.Dst.Unmap(), Protocol: proto, Port: f.DstPort})
	case to && !from:
		return !rs.Allows(policy.Packet{Direction: policy.Ingress, Remote: f.Src.Unmap(), Protocol: proto, Port: f.DstPort})
	}
	return false
}
