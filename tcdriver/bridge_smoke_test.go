package tcdriver

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

func TestBridgeSmoke(t *testing.T) {
	net1 := policy.NetworkRef{Namespace: "ns", Name: "net1"}
	mac := func(s string) net.HardwareAddr { m, _ := net.ParseMAC(s); return m }
	db := &policy.RuleSet{Attachment: policy.Attachment{PodNamespace: "ns", PodName: "db", Network: net1},
		Ingress: policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{{Peers: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}, Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 5432, EndPort: 5432}}}}}}
	fe := &policy.RuleSet{Attachment: policy.Attachment{PodNamespace: "ns", PodName: "fe", Network: net1}}
	other := &policy.RuleSet{Attachment: policy.Attachment{PodNamespace: "ns", PodName: "x", Network: net1}}
	b := &Bridge{Name: "br0", Uplinks: []string{"up0"}, Ports: []BridgePort{
		{Dev: "rep1", MAC: mac("02:00:00:00:00:01"), RuleSet: db},
		{Dev: "rep2", MAC: mac("02:00:00:00:00:02"), RuleSet: fe},
		{Dev: "rep3", MAC: mac("02:00:00:00:00:03"), RuleSet: other},
	}}
	for _, prof := range Profiles {
		fake := NewFake(Options{Profile: prof}, "up0", "rep1", "rep2", "rep3")
		if err := fake.ApplyBridge(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		dbMAC := MAC{2, 0, 0, 0, 0, 1}
		syn := func(src string, port uint16) Packet {
			return Packet{EthType: EthIPv4, DstMAC: dbMAC, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("10.0.0.1"), IPProto: ProtoTCP, SrcPort: 40000, DstPort: port}
		}
		for _, c := range []struct {
			port string
			p    Packet
			want Verdict
		}{
			{"rep2", syn("10.0.0.2", 5432), Pass},
			{"rep2", syn("10.0.0.2", 80), Drop},
			{"rep3", syn("10.0.0.3", 5432), Drop},
			{"up0", syn("10.0.0.2", 5432), Pass},
			{"up0", syn("10.9.0.2", 5432), Drop},
		} {
			got := Trace(fake.Filters(c.port, HookIngress), HookIngress, c.p, NewConntrack())
			if got.Verdict != c.want {
				st, _ := fake.Dump(context.Background(), c.port)
				t.Errorf("%s: %s %s: %s, want %s\n%s", prof.Name, c.port, c.p.String(), got, c.want, st.Canonical())
			}
		}
		if n := len(fake.Filters("rep1", HookEgress)) + len(fake.Filters("rep2", HookEgress)); n != 0 {
			t.Errorf("filters on egress hooks: %d", n)
		}
		before := fake.Stats()
		if err := fake.ApplyBridge(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		if d := fake.Stats().sub(before); d.Adds+d.Deletes+d.Replaces+d.Flushes != 0 {
			t.Errorf("reapply wrote %+v", d)
		}
	}
}
