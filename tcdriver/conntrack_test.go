package tcdriver

import (
	"net/netip"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

func TestFlowDenied(t *testing.T) {
	pod := []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")}
	peer, stranger := netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("10.0.0.9")
	rs := &policy.RuleSet{
		Ingress: policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{{
			Peers: []netip.Prefix{netip.PrefixFrom(peer, 32)}, Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 80, EndPort: 80}},
		}}},
		Egress: policy.DirectionRules{Isolated: true, Stateful: true},
	}
	v6 := netip.MustParseAddr("fd00::3")
	tests := []struct {
		name string
		f    Flow
		want bool
	}{
		{"allowed ingress", Flow{Zone: DefaultZone, Proto: ProtoTCP, Src: peer, Dst: pod[0], SrcPort: 4000, DstPort: 80}, false},
		{"ingress on another port", Flow{Zone: DefaultZone, Proto: ProtoTCP, Src: peer, Dst: pod[0], SrcPort: 4000, DstPort: 81}, true},
		{"ingress from a stranger", Flow{Zone: DefaultZone, Proto: ProtoTCP, Src: stranger, Dst: pod[0], SrcPort: 4000, DstPort: 80}, true},
		{"UDP ingress", Flow{Zone: DefaultZone, Proto: ProtoUDP, Src: peer, Dst: pod[0], SrcPort: 4000, DstPort: 80}, true},
		{"egress, isolated with no rule", Flow{Zone: DefaultZone, Proto: ProtoSCTP, Src: pod[0], Dst: peer, SrcPort: 4000, DstPort: 7}, true},
		{"IPv6 ingress", Flow{Zone: DefaultZone, Proto: ProtoTCP, Src: v6, Dst: pod[1], SrcPort: 4000, DstPort: 80}, true},
		{"IPv4-mapped address of the pod", Flow{Zone: DefaultZone, Proto: ProtoTCP, Src: stranger, Dst: netip.AddrFrom16(pod[0].As16()), DstPort: 80}, true},
		{"another zone", Flow{Zone: 1, Proto: ProtoTCP, Src: stranger, Dst: pod[0], DstPort: 80}, false},
		{"another pod", Flow{Zone: DefaultZone, Proto: ProtoTCP, Src: stranger, Dst: peer, DstPort: 80}, false},
		{"ICMP is left alone", Flow{Zone: DefaultZone, Proto: 1, Src: stranger, Dst: pod[0]}, false},
		{"pod to itself", Flow{Zone: DefaultZone, Proto: ProtoTCP, Src: pod[0], Dst: pod[1], DstPort: 80}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.f.Denied(DefaultZone, pod, rs); got != tt.want {
				t.Errorf("Denied = %v, want %v", got, tt.want)
			}
		})
	}
}
