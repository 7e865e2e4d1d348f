package tcdriver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// The bridge of the unit tests: db (ingress from 10.56.0.10 to TCP 5432),
// web (egress to fd00:57::5 and 10.56.0.0/24 only), fe (no policy), on
// network demo/sriov-net, behind uplink up0.
var (
	macDB  = MAC{0x02, 0, 0, 0, 0, 0x01}
	macWeb = MAC{0x02, 0, 0, 0, 0, 0x02}
	macFE  = MAC{0x02, 0, 0, 0, 0, 0x03}
	macOut = MAC{0x02, 0, 0, 0, 0, 0x99} // a pod of another node
	ipDB   = netip.MustParseAddr("10.56.0.1")
	ipWeb  = netip.MustParseAddr("10.56.0.2")
	ipFE   = netip.MustParseAddr("10.56.0.10")
	ipOut  = netip.MustParseAddr("10.56.0.99")
)

func hw(m MAC) net.HardwareAddr { return net.HardwareAddr(m[:]) }

func dbRules() *policy.RuleSet {
	return &policy.RuleSet{Attachment: att("db-0"), Ingress: policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{{
		Peers: pfx("10.56.0.10/32"), Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 5432, EndPort: 5432}}, Origins: []string{"demo/db ingress[0]"}}}}}
}

func testBridge() *Bridge {
	web := &policy.RuleSet{Attachment: att("web-0"), Egress: policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{{
		Peers: pfx("10.56.0.0/24", "fd00:57::5/128"), Origins: []string{"demo/web egress[0]"}}}}}
	return &Bridge{Name: "br0", Uplinks: []string{"up0"}, Ports: []BridgePort{
		{Dev: "rep1", MAC: hw(macDB), RuleSet: dbRules(), IPs: []netip.Addr{ipDB}},
		{Dev: "rep2", MAC: hw(macWeb), RuleSet: web, IPs: []netip.Addr{ipWeb}},
		{Dev: "rep3", MAC: hw(macFE), RuleSet: &policy.RuleSet{Attachment: att("fe-0")}, IPs: []netip.Addr{ipFE}},
	}}
}

func bridgeFake(t *testing.T, prof Profile, b *Bridge) *Fake {
	t.Helper()
	devs := append([]string(nil), b.Uplinks...)
	for _, p := range b.Ports {
		devs = append(devs, p.Dev)
	}
	fake := NewFake(Options{Profile: prof}, append(devs, "rep9")...)
	if err := fake.ApplyBridge(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	return fake
}

// synTo is the first packet of a TCP connection to dst's MAC.
func synTo(dstMAC MAC, src, dst netip.Addr, port uint16) Packet {
	return Packet{EthType: EthIPv4, DstMAC: dstMAC, Src: src, Dst: dst, IPProto: ProtoTCP, SrcPort: 40000, DstPort: port}
}

// TestBridgeVerdicts: every verdict is taken on the ingress hook of the
// port a frame enters by, for every profile, and the egress hooks are
// empty.
func TestBridgeVerdicts(t *testing.T) {
	bcast := MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	cases := []struct {
		name string
		port string
		p    Packet
		want Verdict
	}{
		{"fe→db allowed port", "rep3", synTo(macDB, ipFE, ipDB, 5432), Pass},
		{"fe→db other port", "rep3", synTo(macDB, ipFE, ipDB, 80), Drop},
		{"web→db: web allows, db does not", "rep2", synTo(macDB, ipWeb, ipDB, 5432), Drop},
		{"web→fe: egress allowed", "rep2", synTo(macFE, ipWeb, ipFE, 80), Pass},
		{"web→outside peer not allowed", "rep2", synTo(macOut, ipWeb, netip.MustParseAddr("10.57.0.1"), 80), Drop},
		{"uplink→db from fe's address", "up0", synTo(macDB, ipFE, ipDB, 5432), Pass},
		{"uplink→db from elsewhere", "up0", synTo(macDB, ipOut, ipDB, 5432), Drop},
		{"uplink→fe (open)", "up0", synTo(macFE, ipOut, ipFE, 22), Pass},
		{"uplink→a MAC that is not local", "up0", synTo(macOut, ipOut, netip.MustParseAddr("10.56.0.98"), 22), Pass},
		{"db→outside (egress open)", "rep1", synTo(macOut, ipDB, ipOut, 22), Pass},
		{"broadcast IP from fe: no single ingress decides it", "rep3", Packet{EthType: EthIPv4, DstMAC: bcast, Src: ipFE, Dst: netip.MustParseAddr("10.56.0.255"), IPProto: ProtoUDP, SrcPort: 1, DstPort: 2}, Drop},
		{"broadcast IP from the uplink", "up0", Packet{EthType: EthIPv4, DstMAC: bcast, Src: ipOut, Dst: netip.MustParseAddr("10.56.0.255"), IPProto: ProtoUDP, SrcPort: 1, DstPort: 2}, Drop},
		{"ARP broadcast", "rep3", Packet{EthType: EthARP, DstMAC: bcast}, Pass},
		{"ARP to db", "up0", Packet{EthType: EthARP, DstMAC: macDB}, Pass},
		{"neighbour solicitation from the uplink", "up0", Packet{EthType: EthIPv6, DstMAC: MAC{0x33, 0x33, 0xff, 0, 0, 1}, Src: netip.MustParseAddr("fe80::1"), Dst: netip.MustParseAddr("ff02::1:ff00:1"), IPProto: ProtoICMPv6, ICMPType: 135}, Pass},
		{"neighbour solicitation from fe", "rep3", Packet{EthType: EthIPv6, DstMAC: MAC{0x33, 0x33, 0xff, 0, 0, 1}, Src: netip.MustParseAddr("fe80::1"), Dst: netip.MustParseAddr("ff02::1:ff00:1"), IPProto: ProtoICMPv6, ICMPType: 135}, Pass},
		{"non-IP frame to db from an open sender", "rep3", Packet{EthType: 0x88b5, DstMAC: macDB}, Drop},
		{"tagged fe→db allowed", "rep3", func() Packet { p := synTo(macDB, ipFE, ipDB, 5432); p.VLANs = []uint16{Eth8021Q}; return p }(), Pass},
		{"tagged uplink→db denied", "up0", func() Packet { p := synTo(macDB, ipOut, ipDB, 5432); p.VLANs = []uint16{Eth8021Q}; return p }(), Drop},
	}
	for _, prof := range Profiles {
		fake := bridgeFake(t, prof, testBridge())
		for _, c := range cases {
			got := Trace(fake.Filters(c.port, HookIngress), HookIngress, c.p, NewConntrack())
			if got.Verdict != c.want {
				t.Errorf("%s: %s (%s on %s): %s, want %s", prof.Name, c.name, c.p.String(), c.port, got, c.want)
			}
		}
		for _, d := range []string{"up0", "rep1", "rep2", "rep3"} {
			if fs := fake.Filters(d, HookEgress); len(fs) != 0 {
				t.Errorf("%s: %d filters on the egress hook of %s", prof.Name, len(fs), d)
			}
		}
	}
}

// TestBridgeRepliesAndOneCommit: the reply of an allowed connection passes
// wherever it enters, and a local connection is committed once, on the
// sender's port.
func TestBridgeRepliesAndOneCommit(t *testing.T) {
	fake := bridgeFake(t, ProfileSoftware, testBridge())
	ct := NewConntrack()
	syn := synTo(macDB, ipFE, ipDB, 5432)
	res := Trace(fake.Filters("rep3", HookIngress), HookIngress, syn, ct)
	commits := 0
	for _, f := range res.Hits {
		for _, a := range f.Actions {
			if a.Kind == ActCt && a.Commit {
				commits++
			}
		}
	}
	if res.Verdict != Pass || commits != 1 {
		t.Fatalf("fe→db: %s with %d commits, want pass with 1", res, commits)
	}
	reply := Packet{EthType: EthIPv4, DstMAC: macFE, Src: ipDB, Dst: ipFE, IPProto: ProtoTCP, SrcPort: 5432, DstPort: 40000}
	if r := Trace(fake.Filters("rep1", HookIngress), HookIngress, reply, ct); r.Verdict != Pass {
		t.Errorf("db's reply on db's port: %s", r)
	}
	// A connection web opened to the outside: its reply enters by the uplink.
	out := synTo(macOut, ipWeb, netip.MustParseAddr("10.56.0.200"), 443)
	if r := Trace(fake.Filters("rep2", HookIngress), HookIngress, out, ct); r.Verdict != Pass {
		t.Fatalf("web→outside: %s", r)
	}
	back := Packet{EthType: EthIPv4, DstMAC: macWeb, Src: out.Dst, Dst: ipWeb, IPProto: ProtoTCP, SrcPort: 443, DstPort: 40000}
	if r := Trace(fake.Filters("up0", HookIngress), HookIngress, back, ct); r.Verdict != Pass {
		t.Errorf("the reply to web by the uplink: %s", r)
	}
	// And from the outside to web (ingress open): web's reply is
	// recognised on web's isolated egress because the uplink committed.
	in := synTo(macWeb, netip.MustParseAddr("10.99.0.1"), ipWeb, 8080)
	if r := Trace(fake.Filters("up0", HookIngress), HookIngress, in, ct); r.Verdict != Pass {
		t.Fatalf("outside→web: %s", r)
	}
	ans := Packet{EthType: EthIPv4, DstMAC: macOut, Src: ipWeb, Dst: in.Src, IPProto: ProtoTCP, SrcPort: 8080, DstPort: 40000}
	if r := Trace(fake.Filters("rep2", HookIngress), HookIngress, ans, ct); r.Verdict != Pass {
		t.Errorf("web's reply to the outside: %s", r)
	}
}

// TestBridgeGolden: the bridge program per profile, as `render -o tc`
// prints it.
func TestBridgeGolden(t *testing.T) {
	for _, prof := range Profiles {
		prog, err := CompileBridge(testBridge(), Options{Profile: prof})
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := prog.WriteBatch(&buf, "bridge br0: db-0 (rep1), web-0 (rep2), fe-0 (rep3), uplink up0"); err != nil {
			t.Fatal(err)
		}
		golden(t, goldenPath("bridge", prof, ".tc"), buf.Bytes())
		// The driver installs exactly what render shows.
		fake := bridgeFake(t, prof, testBridge())
		for _, dev := range prog.Order {
			var want, got []string
			for _, f := range prog.Filters(dev) {
				want = append(want, f.String())
			}
			st, _ := fake.Dump(context.Background(), dev)
			for _, f := range st.Filters {
				got = append(got, f.String())
			}
			sortStrings(want)
			sortStrings(got)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("%s %s: installed\n%s\nrendered\n%s", prof.Name, dev, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		}
	}
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// writes is what an ApplyBridge changed, per kind.
func writes(f *Fake, do func()) Stats {
	before := f.Stats()
	do()
	d := f.Stats().sub(before)
	d.Dumps = 0
	return d
}

// entryTarget is the generation slot the port's entry filters point into
// (a switch changes it).
func entryTarget(t *testing.T, f *Fake, dev string) uint32 {
	t.Helper()
	for _, fl := range f.Filters(dev, HookIngress) {
		if fl.Chain == 0 {
			return f.opts.slotBase(f.opts.slotOf(fl.Actions[0].Chain))
		}
	}
	return 0
}

// TestBridgePodJoinsAndLeavesInPlace: a pod with isolated ingress joining
// the bridge adds its section and one dispatch entry on every other port,
// without a generation switch; leaving removes them (one delete, then one
// flush per chain) and its own port's filters.
func TestBridgePodJoinsAndLeavesInPlace(t *testing.T) {
	for _, prof := range Profiles {
		b := testBridge()
		// A second isolated pod from the start, so that no port's group
		// filters change when one more joins.
		second := dbRules()
		second.Attachment = att("db-2")
		b.Ports = append(b.Ports, BridgePort{Dev: "rep4", MAC: hw(MAC{2, 0, 0, 0, 0, 4}), RuleSet: second})
		fake := bridgeFake(t, prof, b)
		entries := map[string]uint32{}
		ports := []string{"up0", "rep1", "rep2", "rep3", "rep4"}
		for _, d := range ports {
			entries[d] = entryTarget(t, fake, d)
		}
		joined := *b
		rs := dbRules()
		rs.Attachment = att("db-1")
		joined.Ports = append(append([]BridgePort(nil), b.Ports...), BridgePort{Dev: "rep9", MAC: hw(MAC{2, 0, 0, 0, 0, 0x09}), RuleSet: rs})
		// db-1's section and entry on each other port (smaller on a pod's
		// port, where only the rules that allow that pod remain).
		sectionFilters, wantAdds := 0, 0
		for _, d := range ports {
			n := sectionFilterCount(mustCompile(t, &joined, prof).Filters(d), MAC{2, 0, 0, 0, 0, 0x09})
			sectionFilters = max(sectionFilters, n)
			wantAdds += n + 1
		}
		w := writes(fake, func() {
			if err := fake.ApplyBridge(context.Background(), &joined); err != nil {
				t.Fatal(err)
			}
		})
		for d, e := range entries {
			if got := entryTarget(t, fake, d); got != e {
				t.Errorf("%s: %s switched generation (%d → %d) for a pod joining", prof.Name, d, e, got)
			}
		}
		// Five ports gain the section and its entry; rep9 gets its own
		// program.
		if own := len(mustCompile(t, &joined, prof).Filters("rep9")); w.Replaces != 0 || w.Deletes != 0 || w.Flushes != 0 || w.Adds != wantAdds+own {
			t.Errorf("%s: joining wrote %+v, want %d adds (its sections and entries on 5 ports, and rep9's %d)", prof.Name, w, wantAdds+own, own)
		}
		if r := Trace(fake.Filters("up0", HookIngress), HookIngress, synTo(MAC{2, 0, 0, 0, 0, 9}, ipOut, ipDB, 5432), NewConntrack()); r.Verdict != Drop {
			t.Errorf("%s: the new pod's ingress is not enforced on the uplink: %s", prof.Name, r)
		}
		w = writes(fake, func() {
			if err := fake.ApplyBridge(context.Background(), b); err != nil {
				t.Fatal(err)
			}
		})
		if w.Adds != 0 || w.Replaces != 0 || w.Deletes != 5+1 {
			t.Errorf("%s: leaving wrote %+v, want 5 entry deletes and rep9's entry, then flushes", prof.Name, w)
		}
		t.Logf("%s: a pod with isolated ingress joining a bridge of 5 ports: %d adds (its largest section: %d filters); leaving: %d deletes, %d flushes",
			prof.Name, wantAdds, sectionFilters, w.Deletes, w.Flushes)
		if n := len(fake.Filters("rep9", HookIngress)); n != 0 {
			t.Errorf("%s: the port that left keeps %d filters", prof.Name, n)
		}
		want := bridgeFake(t, prof, b)
		for _, d := range ports {
			if canon(t, fake, d) != canon(t, want, d) {
				t.Errorf("%s: %s after join+leave differs from a fresh apply:\n%s\nwant\n%s", prof.Name, d, canon(t, fake, d), canon(t, want, d))
			}
		}
	}
}

// sectionFilterCount counts the filters of the section fs dispatch frames for
// mac to.
func sectionFilterCount(fs []*Filter, mac MAC) int {
	var target uint32
	for _, f := range fs {
		if f.Match.DstMAC == mac && f.Match.DstMACMask == exactMAC {
			target = f.Actions[0].Chain
		}
	}
	n := 0
	for _, f := range fs {
		if target != 0 && f.Chain >= target && f.Chain < target+sectionSize {
			n++
		}
	}
	return n
}

func mustCompile(t *testing.T, b *Bridge, prof Profile) *BridgeProgram {
	t.Helper()
	p, err := CompileBridge(b, Options{Profile: prof})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// canon is the canonical dump of dev with owned chains relative to their
// generation, so that the same program in either generation compares equal.
func canon(t *testing.T, f *Fake, dev string) string {
	t.Helper()
	st, err := f.Dump(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	rel := func(c uint32) uint32 {
		if f.opts.owns(c) {
			return (c - f.opts.ChainBase) % slotSize
		}
		return c
	}
	for _, fl := range st.Filters {
		fl.Chain = rel(fl.Chain)
		for i := range fl.Actions {
			if fl.Actions[i].Kind == ActGoto {
				fl.Actions[i].Chain = rel(fl.Actions[i].Chain)
			}
		}
	}
	return st.Canonical()
}

// TestBridgeRestartAdoptsWithZeroWrites: a new agent over the same kernel
// state finds every port as it wants it.
func TestBridgeRestartAdoptsWithZeroWrites(t *testing.T) {
	for _, prof := range Profiles {
		b := testBridge()
		fake := bridgeFake(t, prof, b)
		restarted := &Fake{reconciler: newReconciler(fake.k, Options{Profile: prof}, nil), k: fake.k}
		w := writes(restarted, func() {
			if err := restarted.ApplyBridge(context.Background(), b); err != nil {
				t.Fatal(err)
			}
		})
		if w.Total() != 0 {
			t.Errorf("%s: restart wrote %+v", prof.Name, w)
		}
	}
}

// TestBridgeReplacesOldPlacement: ports that carried the representor
// placement (both hooks) move to the bridge placement: nothing stays on an
// egress hook, and the verdicts are the bridge's.
func TestBridgeReplacesOldPlacement(t *testing.T) {
	b := testBridge()
	fake := NewFake(Options{}, "up0", "rep1", "rep2", "rep3")
	for _, p := range b.Ports {
		if err := fake.Apply(context.Background(), p.Dev, p.RuleSet); err != nil {
			t.Fatal(err)
		}
	}
	if len(fake.Filters("rep1", HookEgress)) == 0 {
		t.Fatal("the old placement put nothing on db's egress hook")
	}
	if err := fake.ApplyBridge(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	want := bridgeFake(t, ProfileSoftware, b)
	for _, d := range []string{"up0", "rep1", "rep2", "rep3"} {
		if canon(t, fake, d) != canon(t, want, d) {
			t.Errorf("%s after the move differs from a fresh apply:\n%s\nwant\n%s", d, canon(t, fake, d), canon(t, want, d))
		}
	}
}

// TestBridgeFailsClosed: a port that cannot be enforced as given keeps
// its previous rules or is closed; the others are applied; the error
// names the port and why.
func TestBridgeFailsClosed(t *testing.T) {
	b := testBridge()
	fake := bridgeFake(t, ProfileSoftware, b)

	// db's new rule set is invalid: it keeps the previous one.
	bad := *b
	bad.Ports = append([]BridgePort(nil), b.Ports...)
	broken := dbRules()
	broken.Ingress.Rules[0].Peers = pfx("10.56.0.10/24") // host bits
	bad.Ports[0].RuleSet = broken
	fe := policy.RuleSet{Attachment: att("fe-0"), Egress: policy.DirectionRules{Isolated: true, Stateful: true}}
	bad.Ports[2].RuleSet = &fe // and fe is now isolated: applied
	err := fake.ApplyBridge(context.Background(), &bad)
	var pe *PortError
	if err == nil || !strings.Contains(err.Error(), "representor rep1") || !strings.Contains(err.Error(), "host bits") || !strings.Contains(err.Error(), "previous rules kept") {
		t.Fatalf("error %v, want one naming rep1, the host bits and the previous rules kept", err)
	}
	if !errors.As(err, &pe) && !strings.Contains(err.Error(), "db-0") {
		t.Errorf("error %v does not name the attachment", err)
	}
	if r := Trace(fake.Filters("up0", HookIngress), HookIngress, synTo(macDB, ipFE, ipDB, 5432), NewConntrack()); r.Verdict != Pass {
		t.Errorf("db's previous rules are gone: %s", r)
	}
	if r := Trace(fake.Filters("up0", HookIngress), HookIngress, synTo(macDB, netip.MustParseAddr("10.56.0.11"), ipDB, 5432), NewConntrack()); r.Verdict != Drop {
		t.Errorf("db's broken rule set was widened: %s", r)
	}
	if r := Trace(fake.Filters("rep3", HookIngress), HookIngress, synTo(macOut, ipFE, ipOut, 80), NewConntrack()); r.Verdict != Drop {
		t.Errorf("fe's new isolation was not applied: %s", r)
	}

	// A new pod with isolated ingress and no MAC: closed, named.
	noMAC := *b
	noMAC.Ports = append(append([]BridgePort(nil), b.Ports...), BridgePort{Dev: "rep9", RuleSet: dbRules()})
	noMAC.Ports[3].RuleSet.Attachment = att("db-9")
	err = fake.ApplyBridge(context.Background(), &noMAC)
	if err == nil || !strings.Contains(err.Error(), "rep9") || !strings.Contains(err.Error(), "no MAC") || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("error %v, want one naming rep9, the missing MAC and that it is closed", err)
	}
	if r := Trace(fake.Filters("rep9", HookIngress), HookIngress, synTo(macFE, netip.MustParseAddr("10.56.0.9"), ipFE, 80), NewConntrack()); r.Verdict != Drop {
		t.Errorf("the pod without MAC can send: %s", r)
	}
}

// TestBridgeKernelFailureKeepsPorts: a kernel refusal in the middle of an
// ApplyBridge leaves every port with its old or its new rules, and the
// next ApplyBridge completes the change.
func TestBridgeKernelFailureKeepsPorts(t *testing.T) {
	old := testBridge()
	tighter := testBridge()
	tighter.Ports[0].RuleSet.Ingress.Rules[0].Ports = []policy.PortMatch{{Protocol: policy.TCP, Port: 5433, EndPort: 5433}}
	tighter.Ports[0].RuleSet.Ingress.AcceptICMP = true // not in place: a generation switch
	for n := 0; n < 60; n += 3 {
		fake := bridgeFake(t, ProfileSoftware, old)
		fake.FailAfter(n)
		err := fake.ApplyBridge(context.Background(), tighter)
		for _, port := range []string{"up0", "rep3"} {
			oldV := Trace(fake.Filters(port, HookIngress), HookIngress, synTo(macDB, ipFE, ipDB, 5432), NewConntrack()).Verdict
			newV := Trace(fake.Filters(port, HookIngress), HookIngress, synTo(macDB, ipFE, ipDB, 5433), NewConntrack()).Verdict
			if oldV == newV {
				t.Errorf("fail after %d (err %v): %s is neither old nor new: 5432 %s, 5433 %s", n, err, port, oldV, newV)
			}
			if v := Trace(fake.Filters(port, HookIngress), HookIngress, synTo(macDB, ipOut, ipDB, 5432), NewConntrack()).Verdict; v != Drop {
				t.Errorf("fail after %d: %s lets a denied peer in", n, port)
			}
		}
		if err := fake.ApplyBridge(context.Background(), tighter); err != nil {
			t.Fatalf("fail after %d: the retry failed: %v", n, err)
		}
		if w := writes(fake, func() { _ = fake.ApplyBridge(context.Background(), tighter) }); w.Total() != 0 {
			t.Errorf("fail after %d: the retry left work to do: %+v", n, w)
		}
		for _, port := range []string{"up0", "rep3"} {
			if v := Trace(fake.Filters(port, HookIngress), HookIngress, synTo(macDB, ipFE, ipDB, 5433), NewConntrack()).Verdict; v != Pass {
				t.Errorf("fail after %d: %s does not enforce the new rules after the retry", n, port)
			}
		}
	}
}

// TestBridgeCrossNetworkFailsClosed: a frame from a pod of one network to
// the MAC of an isolated pod of another network on the same bridge is
// dropped (its connection state lives in another zone).
func TestBridgeCrossNetworkFailsClosed(t *testing.T) {
	b := testBridge()
	other := dbRules()
	other.Attachment.Network = policy.NetworkRef{Namespace: "demo", Name: "other-net"}
	other.Ingress.Rules[0].Peers = pfx("10.56.0.0/16")
	b.Ports = append(b.Ports, BridgePort{Dev: "rep9", MAC: hw(MAC{2, 0, 0, 0, 0, 9}), RuleSet: other})
	fake := bridgeFake(t, ProfileSoftware, b)
	if r := Trace(fake.Filters("rep3", HookIngress), HookIngress, synTo(MAC{2, 0, 0, 0, 0, 9}, ipFE, ipDB, 5432), NewConntrack()); r.Verdict != Drop {
		t.Errorf("cross-network frame: %s", r)
	}
	if r := Trace(fake.Filters("up0", HookIngress), HookIngress, synTo(MAC{2, 0, 0, 0, 0, 9}, ipFE, ipDB, 5432), NewConntrack()); r.Verdict != Pass {
		t.Errorf("the other network's pod from the uplink: %s", r)
	}
}

func TestValidateBridge(t *testing.T) {
	b := testBridge()
	b.Ports[1].MAC = hw(macDB)
	b.Ports = append(b.Ports, BridgePort{Dev: "rep1", MAC: hw(MAC{2, 0, 0, 0, 0, 7}), RuleSet: dbRules()},
		BridgePort{Dev: "rep8", MAC: hw(MAC{1, 0, 0, 0, 0, 7}), RuleSet: dbRules()})
	err := ValidateBridge(b)
	for _, want := range []string{"MAC 02:00:00:00:00:01 is also the MAC of rep1", "listed twice", "rep8: attachment demo/db-0 net1 (network demo/sriov-net): MAC 01:00:00:00:00:07 is not a unicast address"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateBridge: %v, want %q", err, want)
		}
	}
}

// TestBridgeReceiverChangeRebuildsOnlySection: a change to a pod's ingress
// that cannot be made in place (a rule added) rebuilds that pod's section
// under a new number on every port and moves its dispatch entry with one
// replace; no port switches generation, no other section is touched.
func TestBridgeReceiverChangeRebuildsOnlySection(t *testing.T) {
	for _, prof := range Profiles {
		b := testBridge()
		fake := bridgeFake(t, prof, b)
		entries := map[string]uint32{}
		ports := []string{"up0", "rep1", "rep2", "rep3"}
		for _, d := range ports {
			entries[d] = entryTarget(t, fake, d)
		}
		changed := testBridge()
		db := changed.Ports[0].RuleSet
		db.Ingress.Rules = append(db.Ingress.Rules, policy.Rule{Peers: pfx("10.56.0.2/32"), Ports: []policy.PortMatch{{Protocol: policy.UDP, Port: 53, EndPort: 53}}})
		w := writes(fake, func() {
			if err := fake.ApplyBridge(context.Background(), changed); err != nil {
				t.Fatal(err)
			}
		})
		for d, e := range entries {
			if got := entryTarget(t, fake, d); got != e {
				t.Errorf("%s: %s switched generation for one receiver's change", prof.Name, d)
			}
		}
		// db's section is on up0, rep2 and rep3 (not on its own port);
		// on fe's port (rep3) it holds only the rules that allow fe, and
		// the new rule does not.
		if w.Replaces != 2 || w.Deletes != 0 {
			t.Errorf("%s: %+v, want 2 dispatch entry replaces (up0, rep2) and no delete", prof.Name, w)
		}
		if canon(t, fake, "rep3") != canon(t, bridgeFake(t, prof, b), "rep3") {
			t.Errorf("%s: fe's port changed for a rule that does not allow fe", prof.Name)
		}
		want := bridgeFake(t, prof, changed)
		for _, d := range ports {
			ct := NewConntrack()
			for _, p := range []Packet{synTo(macDB, ipFE, ipDB, 5432), {EthType: EthIPv4, DstMAC: macDB, Src: ipWeb, Dst: ipDB, IPProto: ProtoUDP, SrcPort: 1, DstPort: 53}, synTo(macDB, ipWeb, ipDB, 5432)} {
				if got, exp := Trace(fake.Filters(d, HookIngress), HookIngress, p, ct).Verdict, Trace(want.Filters(d, HookIngress), HookIngress, p, NewConntrack()).Verdict; got != exp {
					t.Errorf("%s: %s %s: %s after the change, %s on a fresh apply", prof.Name, d, p.String(), got, exp)
				}
			}
		}
		if w2 := writes(fake, func() { _ = fake.ApplyBridge(context.Background(), changed) }); w2.Total() != 0 {
			t.Errorf("%s: reapplying wrote %+v", prof.Name, w2)
		}
		t.Logf("%s: a rule added to one receiver on a bridge of 4 ports: %d adds, %d replaces, %d flushes", prof.Name, w.Adds, w.Replaces, w.Flushes)
	}
}

// TestBridgeSenderChangeRebuildsOnlySection: a change to a pod's egress
// that cannot be made in place rebuilds its sender section beside the
// installed one and moves the entry filter to it; its port's receiver
// sections and every other port are untouched.
func TestBridgeSenderChangeRebuildsOnlySection(t *testing.T) {
	for _, prof := range Profiles {
		b := testBridge()
		fake := bridgeFake(t, prof, b)
		changed := testBridge()
		web := changed.Ports[1].RuleSet
		web.Egress.Rules = append(web.Egress.Rules, policy.Rule{Peers: pfx("10.57.0.0/16"), Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 80, EndPort: 80}}})
		before := map[string]string{}
		for _, d := range []string{"up0", "rep1", "rep3"} {
			before[d] = canon(t, fake, d)
		}
		w := writes(fake, func() {
			if err := fake.ApplyBridge(context.Background(), changed); err != nil {
				t.Fatal(err)
			}
		})
		if w.Replaces != 1 || w.Deletes != 0 {
			t.Errorf("%s: %+v, want the entry filter replaced once", prof.Name, w)
		}
		for d, c := range before {
			if canon(t, fake, d) != c {
				t.Errorf("%s: %s changed for web's egress", prof.Name, d)
			}
		}
		if r := Trace(fake.Filters("rep2", HookIngress), HookIngress, synTo(macOut, ipWeb, netip.MustParseAddr("10.57.0.1"), 80), NewConntrack()); r.Verdict != Pass {
			t.Errorf("%s: web's new rule is not enforced: %s", prof.Name, r)
		}
		if w2 := writes(fake, func() { _ = fake.ApplyBridge(context.Background(), changed) }); w2.Total() != 0 {
			t.Errorf("%s: reapplying wrote %+v", prof.Name, w2)
		}
		t.Logf("%s: a rule added to one sender: %d adds, %d replace, %d flushes, on its port only", prof.Name, w.Adds, w.Replaces, w.Flushes)
	}
}

// TestBridgeCounters: a pod's egress counters come from its sender section
// on its own port, its ingress counters from its sections on every other
// port; the collector exports them per rule.
func TestBridgeCounters(t *testing.T) {
	b := testBridge()
	fake := bridgeFake(t, ProfileSoftware, b)
	send := func(port string, p Packet) {
		if _, err := fake.Send(port, HookIngress, p, NewConntrack()); err != nil {
			t.Fatal(err)
		}
	}
	send("rep3", synTo(macDB, ipFE, ipDB, 5432))                             // db ingress rule 0
	send("up0", synTo(macDB, ipFE, ipDB, 5432))                              // db ingress rule 0, by the uplink
	send("up0", synTo(macDB, ipOut, ipDB, 5432))                             // db ingress drop
	send("rep2", synTo(macDB, ipWeb, ipDB, 5432))                            // web egress rule 0, then db ingress drop
	send("rep2", synTo(macOut, ipWeb, netip.MustParseAddr("10.57.0.1"), 80)) // web egress drop
	states := map[string]*State{}
	for _, d := range []string{"up0", "rep1", "rep2", "rep3"} {
		st, err := fake.Dump(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		states[d] = st
	}
	for _, c := range []struct {
		dev     string
		d       policy.Direction
		rule0   uint64
		dropped uint64
	}{
		{"rep1", policy.Ingress, 2, 2},
		{"rep2", policy.Egress, 1, 1},
	} {
		got, ok := BridgeCounters(states, b, c.dev, c.d, Options{})
		if !ok || got.Rules[0] != c.rule0 || got.Dropped != c.dropped {
			t.Errorf("%s %s: %+v (ok %v), want rule 0 %d, dropped %d", c.dev, c.d, got, ok, c.rule0, c.dropped)
		}
	}
	if _, ok := BridgeCounters(states, b, "rep3", policy.Ingress, Options{}); ok {
		t.Error("fe isolates nothing, yet has ingress sections")
	}
	want := `
# HELP multi_networkpolicy_tc_rule_packets_total First packets of new connections allowed by each rule of an isolated direction; rule names the policy rules it came from, or accept-icmp.
# TYPE multi_networkpolicy_tc_rule_packets_total counter
multi_networkpolicy_tc_rule_packets_total{direction="egress",namespace="demo",network="demo/sriov-net",pod="web-0",rule="demo/web egress[0]"} 1
multi_networkpolicy_tc_rule_packets_total{direction="ingress",namespace="demo",network="demo/sriov-net",pod="db-0",rule="demo/db ingress[0]"} 2
`
	if err := testutil.CollectAndCompare(NewCountersCollector(fake, fake, Options{}, nil), strings.NewReader(want), "multi_networkpolicy_tc_rule_packets_total"); err != nil {
		t.Error(err)
	}
}

// TestBridgeGotosGoForward: mlx5 offloads a goto to a lower chain only with
// firmware support for backward gotos; every offloaded goto of a bridge
// port's pipeline goes forward (the section of neighbour discovery jumps
// back to state, in software only).
func TestBridgeGotosGoForward(t *testing.T) {
	for _, prof := range []Profile{ProfileMLX561, ProfileMLX563} {
		prog := mustCompile(t, testBridge(), prof)
		for _, dev := range prog.Order {
			for _, f := range prog.Filters(dev) {
				for _, a := range f.Actions {
					if ok, _ := prof.Offloads(f); ok && a.Kind == ActGoto && a.Chain <= f.Chain {
						t.Errorf("%s %s: %s jumps back in hardware", prof.Name, dev, f)
					}
				}
			}
		}
	}
}

// TestBridgeHardwareRulesPerRepresentor: on a representor, only the pod's
// own pipeline is offloaded, whatever the number of receivers it
// dispatches to (in hardware it passes established connections and sends
// the rest to software); the uplink's sections are the fast path of
// established traffic to each pod and are offloaded.
func TestBridgeHardwareRulesPerRepresentor(t *testing.T) {
	for _, prof := range []Profile{ProfileMLX561, ProfileMLX563} {
		var repHW, upHW []int
		for _, n := range []int{1, 10, 50} {
			b := testBridge()
			for i := 0; i < n; i++ {
				rs := dbRules()
				rs.Attachment = att(fmt.Sprintf("db-%d", i+10))
				b.Ports = append(b.Ports, BridgePort{Dev: fmt.Sprintf("rx%d", i), MAC: hw(MAC{2, 1, 0, 0, 0, byte(i)}), RuleSet: rs})
			}
			prog := mustCompile(t, b, prof)
			repHW = append(repHW, len(prof.Offloaded(prog.Filters("rep3"))))
			upHW = append(upHW, len(prof.Offloaded(prog.Filters("up0"))))
		}
		if repHW[0] != repHW[1] || repHW[1] != repHW[2] {
			t.Errorf("%s: hardware rules on a representor grow with the receivers: %v", prof.Name, repHW)
		}
		if upHW[0] >= upHW[1] || upHW[1] >= upHW[2] {
			t.Errorf("%s: the uplink's hardware rules do not follow the receivers: %v", prof.Name, upHW)
		}
		t.Logf("%s: hardware rules for 1, 10, 50 extra isolated receivers: representor %v, uplink %v", prof.Name, repHW, upHW)
	}
}

// TestBridgeUplinkLeavesOtherFramesAlone: the uplink is shared with
// everything else on the node. Our chain 0 filters there match only frames
// for a local pod we decide (and group frames when one isolates ingress),
// so every other frame goes on to the filters after ours (a foreign filter
// at a higher pref) or, in hardware, to the bridge.
func TestBridgeUplinkLeavesOtherFramesAlone(t *testing.T) {
	for _, prof := range Profiles {
		fake := bridgeFake(t, prof, testBridge())
		for _, p := range []Packet{
			synTo(macOut, ipOut, netip.MustParseAddr("10.56.0.98"), 22), // a MAC that is not local
			synTo(macFE, ipOut, ipFE, 22),                               // a pod that isolates nothing
			{EthType: EthARP, DstMAC: macOut},
		} {
			if r := Trace(fake.Filters("up0", HookIngress), HookIngress, p, NewConntrack()); len(r.Hits) != 0 || r.Verdict != Pass {
				t.Errorf("%s: %s on the uplink: %s, want no filter of ours to match", prof.Name, p.String(), r)
			}
		}
	}
}

// TestBridgeSourceIsTheSender: a frame a local pod sends to another local
// pod is judged as coming from the sender's own addresses: with another
// source address (one the receiver allows, spoofed or routed) it matches
// none of the receiver's rules on the sender's port, unless RoutedSources,
// which keeps the receiver's whole rules there (larger sections).
func TestBridgeSourceIsTheSender(t *testing.T) {
	spoofed := synTo(macDB, ipFE, ipDB, 5432) // fe's address, sent by web
	for _, c := range []struct {
		routed bool
		want   Verdict
	}{{false, Drop}, {true, Pass}} {
		for _, prof := range Profiles {
			b := testBridge()
			b.Ports[1].RuleSet.Egress = policy.DirectionRules{} // web's egress open
			fake := NewFake(Options{Profile: prof, RoutedSources: c.routed}, "up0", "rep1", "rep2", "rep3")
			if err := fake.ApplyBridge(context.Background(), b); err != nil {
				t.Fatal(err)
			}
			if r := Trace(fake.Filters("rep2", HookIngress), HookIngress, spoofed, NewConntrack()); r.Verdict != c.want {
				t.Errorf("%s routed=%v: web sending as fe to db: %s, want %s", prof.Name, c.routed, r, c.want)
			}
			if r := Trace(fake.Filters("rep3", HookIngress), HookIngress, spoofed, NewConntrack()); r.Verdict != Pass {
				t.Errorf("%s routed=%v: fe to db: %s", prof.Name, c.routed, r)
			}
		}
	}
}

// TestBridgeJoinNeverOpens: a pod programmed alone (the representor
// placement: its ingress on its egress hook) joining the bridge stays
// enforced at every step of the ApplyBridge that moves it, even one cut
// short by a kernel refusal: its egress hook is cleared only after every
// port dispatches to its section.
func TestBridgeJoinNeverOpens(t *testing.T) {
	full := testBridge()
	without := testBridge()
	without.Ports = without.Ports[1:]
	denied := synTo(macDB, ipFE, ipDB, 80)
	for n := 0; n < 80; n += 2 {
		fake := NewFake(Options{}, "up0", "rep1", "rep2", "rep3")
		if err := fake.ApplyBridge(context.Background(), without); err != nil {
			t.Fatal(err)
		}
		if err := fake.Apply(context.Background(), "rep1", dbRules()); err != nil {
			t.Fatal(err)
		}
		fake.FailAfter(n)
		_ = fake.ApplyBridge(context.Background(), full)
		fake.FailAfter(-1)
		for _, port := range []string{"rep3", "up0"} {
			ct := NewConntrack()
			if Trace(fake.Filters(port, HookIngress), HookIngress, denied, ct).Verdict == Pass &&
				Trace(fake.Filters("rep1", HookEgress), HookEgress, denied, ct).Verdict == Pass {
				t.Fatalf("fail after %d: a denied connection to db entering by %s passes", n, port)
			}
		}
	}
}

// TestBridgeLeavesPortProgrammedAlone: a port closed on its own (Apply)
// after the bridge's last apply is the caller's: the bridge applied
// without it leaves its filters as they are.
func TestBridgeLeavesPortProgrammedAlone(t *testing.T) {
	b := testBridge()
	fake := bridgeFake(t, ProfileSoftware, b)
	closed := &policy.RuleSet{Attachment: att("db-0"), Ingress: policy.DirectionRules{Isolated: true, Stateful: true}, Egress: policy.DirectionRules{Isolated: true, Stateful: true}}
	if err := fake.Apply(context.Background(), "rep1", closed); err != nil {
		t.Fatal(err)
	}
	want := canon(t, fake, "rep1")
	without := testBridge()
	without.Ports = without.Ports[1:]
	if err := fake.ApplyBridge(context.Background(), without); err != nil {
		t.Fatal(err)
	}
	if got := canon(t, fake, "rep1"); got != want {
		t.Errorf("the port closed alone changed:\n%s\nwant\n%s", got, want)
	}
}

// TestBridgeTooLargeKeepsEveryPort: a bridge that cannot be enforced as a
// whole (more attachments than a port can dispatch to) is refused, and
// every port keeps its rules.
func TestBridgeTooLargeKeepsEveryPort(t *testing.T) {
	b := testBridge()
	fake := bridgeFake(t, ProfileSoftware, b)
	before := canon(t, fake, "rep1") + canon(t, fake, "up0")
	big := testBridge()
	for i := 0; i <= MaxBridgePorts; i++ {
		rs := dbRules()
		rs.Attachment = att(fmt.Sprintf("x-%d", i))
		big.Ports = append(big.Ports, BridgePort{Dev: fmt.Sprintf("x%d", i), MAC: hw(MAC{2, 2, 0, 0, byte(i >> 8), byte(i)}), RuleSet: rs})
	}
	if err := fake.ApplyBridge(context.Background(), big); err == nil || !strings.Contains(err.Error(), "exceed") {
		t.Fatalf("ApplyBridge of %d ports: %v", len(big.Ports), err)
	}
	if after := canon(t, fake, "rep1") + canon(t, fake, "up0"); after != before {
		t.Error("a refused bridge changed its ports")
	}
}

// TestBridgeInHardwareAsExpected: after every change the driver compares
// each filter's in_hw_count with what the placement expects (one port for
// what the profile offloads, none for what it keeps in software) and
// exports the filters not in hardware per reason: on switchdev ports that
// offload what the profile matches nothing is missing; on a device that
// offloads nothing, every filter the profile puts in hardware is.
func TestBridgeInHardwareAsExpected(t *testing.T) {
	prof := ProfileMLX563
	fake := NewFake(Options{Profile: prof}, "up0", "rep1", "rep2", "rep3")
	reg := prometheus.NewRegistry()
	fake.metrics = NewMetrics(reg)
	for _, d := range []string{"up0", "rep1", "rep2"} {
		fake.SetOffload(d, prof)
	}
	if err := fake.ApplyBridge(context.Background(), testBridge()); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"up0", "rep1", "rep2", "rep3"} {
		st, err := fake.Dump(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		missing, reasons := NotInHardware(st, prof)
		offloadable := len(prof.Offloaded(st.Ours()))
		want := 0
		if d == "rep3" {
			want = offloadable // a device that offloads nothing
		}
		if missing != want || reasons[reasonNotOffloaded] != want {
			t.Errorf("%s: %d missing (%v), want %d of %d offloadable", d, missing, reasons, want, offloadable)
		}
		got := testutil.ToFloat64(fake.metrics.notInHW.WithLabelValues(d, reasonNotOffloaded))
		if int(got) != want {
			t.Errorf("%s: metric %v, want %d", d, got, want)
		}
		if d == "rep2" && reasons["icmp type (needs the firmware flex parser)"] == 0 {
			t.Errorf("%s: the filters kept in software by design are not counted by reason: %v", d, reasons)
		}
	}
}
