package tcdriver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	mnp "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy/policytest"
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

// The bridge placement figures (docs/performance.md "Bridge placement"):
// the 110-pod node of policy's BenchmarkRenderNode (5,000 pods in 50
// namespaces, 1,000 policies, every pod on 2 SR-IOV networks), its 110
// attachments of network infra/sriov-a as one bridge with one uplink,
// compiled for mlx5-6.3. For one pod change and one policy change, in the
// bridge placement (per-port copies, ApplyBridge) and in the old placement
// (Apply per representor), side by side: software filters, hardware rules,
// netlink writes of the change and the compile time of the change (ns/op).

var (
	benchNetA = policy.NetworkRef{Namespace: "infra", Name: "sriov-a"}
	benchNetB = policy.NetworkRef{Namespace: "infra", Name: "sriov-b"}
	benchOpts = Options{Profile: ProfileMLX563}
)

// benchNode is BenchmarkRenderNode's cluster (policy/bench_test.go,
// rebuilt here: test helpers do not cross packages).
type benchNode struct {
	engine *policy.Engine
	local  []policy.Attachment
}

func benchPod(ns string, i, idx int, labels map[string]string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pod%03d", i), Annotations: map[string]string{}, Labels: labels},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: int32(8000 + i%3), Protocol: corev1.ProtocolTCP}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	var statuses []nadv1.NetworkStatus
	for k, n := range []policy.NetworkRef{benchNetA, benchNetB} {
		addr := netip.AddrFrom4([4]byte{10, byte(k), byte(idx >> 8), byte(idx)})
		statuses = append(statuses, nadv1.NetworkStatus{Name: n.String(), Interface: fmt.Sprintf("net%d", k+1), IPs: []string{addr.String()}})
	}
	st, _ := json.Marshal(statuses)
	p.Annotations[nadv1.NetworkAttachmentAnnot] = benchNetA.String() + "," + benchNetB.String()
	p.Annotations[nadv1.NetworkStatusAnnot] = string(st)
	return p
}

func newBenchNode(tb testing.TB) *benchNode {
	tb.Helper()
	const namespaces, podsPerNS, policiesPerNS, apps, localPods = 50, 100, 20, 10, 110
	e := policy.NewEngine(policy.Options{})
	for _, n := range []policy.NetworkRef{benchNetA, benchNetB} {
		e.UpsertNAD(policytest.NAD(n, "accelerated-bridge"))
	}
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	portOf := func(p *corev1.Protocol, port intstr.IntOrString, end *int32) mnp.MultiNetworkPolicyPort {
		return mnp.MultiNetworkPolicyPort{Protocol: p, Port: &port, EndPort: end}
	}
	labelSel := func(k, v string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
	}
	var pods []*corev1.Pod
	var policies []*mnp.MultiNetworkPolicy
	for n := range namespaces {
		ns := fmt.Sprintf("ns%02d", n)
		e.UpsertNamespace(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{"team": fmt.Sprintf("t%d", n%5), "env": []string{"prod", "dev"}[n%2]}}})
		for i := range podsPerNS {
			p := benchPod(ns, i, n*podsPerNS+i, map[string]string{"app": fmt.Sprintf("app%d", i%apps), "tier": []string{"fe", "be"}[i%2]})
			e.UpsertPod(p)
			pods = append(pods, p)
		}
		for i := range policiesPerNS {
			spec := mnp.MultiNetworkPolicySpec{PodSelector: *labelSel("app", fmt.Sprintf("app%d", i%apps))}
			switch i % 4 {
			case 0: // from pods of the namespace
				spec.Ingress = []mnp.MultiNetworkPolicyIngressRule{{From: []mnp.MultiNetworkPolicyPeer{{PodSelector: labelSel("app", fmt.Sprintf("app%d", (i+1)%apps))}},
					Ports: []mnp.MultiNetworkPolicyPort{portOf(&tcp, intstr.FromInt32(80), nil)}}}
			case 1: // from other teams' namespaces, a port range
				end := int32(9100)
				spec.Ingress = []mnp.MultiNetworkPolicyIngressRule{{From: []mnp.MultiNetworkPolicyPeer{{NamespaceSelector: labelSel("team", fmt.Sprintf("t%d", i%5)), PodSelector: labelSel("tier", "fe")}},
					Ports: []mnp.MultiNetworkPolicyPort{portOf(&tcp, intstr.FromInt32(9000), &end)}}}
			case 2: // egress to an ipBlock with except, and to a named port
				spec.PolicyTypes = []mnp.MultiPolicyType{mnp.PolicyTypeIngress, mnp.PolicyTypeEgress}
				spec.Egress = []mnp.MultiNetworkPolicyEgressRule{
					{To: []mnp.MultiNetworkPolicyPeer{{IPBlock: &mnp.IPBlock{CIDR: "10.0.0.0/16", Except: []string{fmt.Sprintf("10.0.%d.0/24", i)}}}},
						Ports: []mnp.MultiNetworkPolicyPort{portOf(&udp, intstr.FromInt32(53), nil)}},
					{To: []mnp.MultiNetworkPolicyPeer{{PodSelector: labelSel("tier", "be")}}, Ports: []mnp.MultiNetworkPolicyPort{portOf(&tcp, intstr.FromString("http"), nil)}},
				}
			default: // from a namespace's pods by label expression
				spec.Ingress = []mnp.MultiNetworkPolicyIngressRule{{From: []mnp.MultiNetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{
					MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{"app1", "app2", "app3"}}}}}}}}
			}
			policies = append(policies, &mnp.MultiNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("policy%02d", i),
				Annotations: map[string]string{policy.PolicyForAnnotation: "infra/sriov-a, infra/sriov-b"}}, Spec: spec})
		}
	}
	for _, p := range policies {
		e.UpsertPolicy(p)
	}
	node := &benchNode{engine: e}
	for i := range localPods {
		atts, err := policy.PodAttachments(pods[i*(len(pods)/localPods)])
		if err != nil {
			tb.Fatal(err)
		}
		node.local = append(node.local, atts...)
	}
	e.SetAttachments(node.local)
	return node
}

// ruleSets computes the rule sets of the node's attachments on sriov-a,
// by attachment ID.
func (n *benchNode) ruleSets(tb testing.TB) map[string]*policy.RuleSet {
	tb.Helper()
	rss, err := n.engine.ComputeAll()
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]*policy.RuleSet{}
	for _, rs := range rss {
		if a := rs.Attachment; a.Network == benchNetA {
			out[a.ID()] = rs
			benchIPs[a.ID()] = n.engine.PodIPs(a.PodNamespace, a.PodName, a.Network)
		}
	}
	return out
}

// benchIPs are the addresses of the benchmark's attachments (the agent
// gives them to the driver with each bridge port).
var benchIPs = map[string][]netip.Addr{}

// benchState is the desired state of the bridge: rule sets by attachment
// ID; an attachment's representor and MAC follow from its ID.
type benchState map[string]*policy.RuleSet

func benchDev(id string) string {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return fmt.Sprintf("rep%08x", h)
}

func benchMAC(dev string) net.HardwareAddr {
	v, err := strconv.ParseUint(strings.TrimPrefix(dev, "rep"), 16, 32)
	if err != nil {
		panic(err) // benchDev names every representor
	}
	return net.HardwareAddr{0x02, 0x00, byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

func (s benchState) bridge() *Bridge {
	b := &Bridge{Name: "br-sriov-a", Uplinks: []string{"up0"}}
	ids := make([]string, 0, len(s))
	for id := range s {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		d := benchDev(id)
		b.Ports = append(b.Ports, BridgePort{Dev: d, MAC: benchMAC(d), RuleSet: s[id], IPs: benchIPs[id]})
	}
	return b
}

func (s benchState) devs() []string {
	out := []string{"up0"}
	for id := range s {
		out = append(out, benchDev(id))
	}
	return out
}

// benchChange is one change of the node: before, after, and the
// attachments whose rule sets differ (the ones the agent applies in the
// old placement).
type benchChange struct {
	name          string
	before, after benchState
	changed       []string
}

func (c *benchChange) diff() {
	for id, rs := range c.after {
		if !reflect.DeepEqual(c.before[id], rs) {
			c.changed = append(c.changed, id)
		}
	}
	for id := range c.before {
		if c.after[id] == nil {
			c.changed = append(c.changed, id)
		}
	}
	sort.Strings(c.changed)
}

func cloneRuleSet(rs *policy.RuleSet) *policy.RuleSet {
	c := *rs
	c.Ingress.Rules = append([]policy.Rule(nil), rs.Ingress.Rules...)
	c.Egress.Rules = append([]policy.Rule(nil), rs.Egress.Rules...)
	for i := range c.Ingress.Rules {
		c.Ingress.Rules[i].Peers = append([]netip.Prefix(nil), c.Ingress.Rules[i].Peers...)
	}
	return &c
}

func cloneState(s benchState) benchState {
	out := benchState{}
	for id, rs := range s {
		out[id] = rs
	}
	return out
}

// benchChanges: a pod added to the node (a new pod of ns00, app0/fe, which
// other pods' rules select too) and removed again; a peer added to the
// first ingress rule of one attachment; a rule added to it.
func benchChanges(tb testing.TB) []*benchChange {
	tb.Helper()
	n := newBenchNode(tb)
	base := benchState(n.ruleSets(tb))
	pod := benchPod("ns00", 900, 4900+50, map[string]string{"app": "app0", "tier": "fe"})
	pod.Name = "newpod"
	n.engine.UpsertPod(pod)
	atts, err := policy.PodAttachments(pod)
	if err != nil {
		tb.Fatal(err)
	}
	n.engine.SetAttachments(append(append([]policy.Attachment(nil), n.local...), atts...))
	added := benchState(n.ruleSets(tb))
	if len(added) != len(base)+1 {
		tb.Fatalf("pod added: %d attachments, want %d", len(added), len(base)+1)
	}
	var target string
	for _, id := range slices.Sorted(maps.Keys(base)) {
		if rs := base[id]; rs.Ingress.Isolated && len(rs.Ingress.Rules) > 0 && !rs.Ingress.Rules[0].AnyPeer && len(rs.Ingress.Rules[0].Peers) > 0 {
			target = id
			break
		}
	}
	if target == "" {
		tb.Fatal("no attachment with an ingress rule with peers")
	}
	peer := cloneState(base)
	peer[target] = cloneRuleSet(base[target])
	peer[target].Ingress.Rules[0].Peers = append(peer[target].Ingress.Rules[0].Peers, netip.MustParsePrefix("10.99.0.1/32"))
	rule := cloneState(base)
	rule[target] = cloneRuleSet(base[target])
	rule[target].Ingress.Rules = append(rule[target].Ingress.Rules, policy.Rule{Peers: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")},
		Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 7777, EndPort: 7777}}, Origins: []string{"bench/new-rule"}})
	out := []*benchChange{
		{name: "pod-added", before: base, after: added},
		{name: "pod-removed", before: added, after: base},
		{name: "peer-added", before: base, after: peer},
		{name: "rule-added", before: base, after: rule},
	}
	for _, c := range out {
		c.diff()
	}
	return out
}

// placementFigures are the filters and hardware rules of a state.
// hwLean is the hardware rules if everything a frame reaches only after
// its conntrack state was decided were software-only (see leanHardware).
type placementFigures struct{ filters, hwRules, hwLean int }

// leanHardware counts the offloaded filters of a port in the bridge
// placement that a frame can reach in hardware before or at its conntrack
// state: the entry, the uplink's dispatch entries, and the classify and
// state chains of the sections that run conntrack (a pod's sender section
// on its port, the receivers' whole pipelines behind the uplink). A new
// connection always misses the hardware CT table and an established one
// passes at the state chain, so nothing after it decides in hardware
// (TestEswitchAgreesWithPolicy counts 0 such hardware hits).
func leanHardware(fs []*Filter, uplink bool) int {
	cb := benchOpts.withDefaults().ChainBase
	n := 0
	for _, f := range benchOpts.Profile.Offloaded(fs) {
		if f.Chain < cb {
			n++ // the entries of chain 0
			continue
		}
		kind, _, rel := benchSectionOf(f.Chain - (cb + (f.Chain-cb)/slotSize*slotSize))
		switch {
		case kind == "dispatch":
			if uplink && f.Prio == prioDispatchEntry {
				n++
			}
		case (kind == "sender") != uplink && (rel == chainClassify || rel == chainState):
			n++
		}
	}
	return n
}

// benchSectionOf places a chain of a port's generation (relative to its base)
// in its section: the sender's (its own pod's egress), the dispatch chains,
// or receiver section k; rel is the chain within the section.
func benchSectionOf(c uint32) (kind string, k int, rel uint32) {
	switch {
	case c >= chainReceivers:
		return "receiver", int((c - chainReceivers) / sectionSize), (c - chainReceivers) % sectionSize
	case c >= chainDispatch:
		return "dispatch", 0, c - chainDispatch
	}
	return "sender", 0, c % sectionSize
}

func figuresOf(f *Fake, devs []string) placementFigures {
	var p placementFigures
	for _, d := range devs {
		for _, h := range []Hook{HookIngress, HookEgress} {
			fs := f.Filters(d, h)
			p.filters += len(fs)
			// Per-port copies: each offloaded filter is one hardware rule
			// of its own port.
			p.hwRules += len(benchOpts.Profile.Offloaded(fs))
		}
	}
	return p
}

func changeWrites(s Stats) int { return s.Adds + s.Replaces + s.Deletes + s.Flushes }

// BenchmarkBridgePlacement reports, per change, the figures of the bridge
// placement (bridge/...), of a shared block computed from it (metrics
// shared-*), and of the old placement (old/...). ns/op is the compile time
// of the change: the bridge placement compiles every port (ApplyBridge
// does), the old placement the rule sets that changed. The bridge
// placement's writes are the real reconciler's, port by port (portChange).
func BenchmarkBridgePlacement(b *testing.B) {
	changes := benchChanges(b)
	ctx := context.Background()
	opts := benchOpts.withDefaults()
	for _, c := range changes {
		b.Run("bridge/"+c.name, func(b *testing.B) {
			before, after := c.before.bridge(), c.after.bridge()
			var st Stats
			var fig placementFigures
			for _, dev := range unionPorts(before, after) {
				s, f := portChange(b, before, after, dev)
				st = addStats(st, s)
				fig.filters += f.filters
				fig.hwRules += f.hwRules
				fig.hwLean += f.hwLean
			}
			shared := sharedBlock(before, after)
			b.ReportAllocs()
			defer benchCPU(b)()
			for b.Loop() {
				for _, dev := range portOrder(after) {
					compilePort(after, dev, opts, nil)
				}
			}
			b.ReportMetric(float64(len(after.Ports)+len(after.Uplinks)), "ports")
			b.ReportMetric(float64(fig.filters), "filters")
			b.ReportMetric(float64(fig.hwRules), "hw-rules")
			b.ReportMetric(float64(fig.hwLean), "hw-rules-lean")
			b.ReportMetric(float64(changeWrites(st)), "writes")
			b.ReportMetric(float64(st.Dumps), "dumps")
			b.ReportMetric(float64(shared.filters), "shared-filters")
			b.ReportMetric(float64(shared.hwRules), "shared-hw-rules")
			b.ReportMetric(float64(shared.writes), "shared-writes")
		})
		b.Run("old/"+c.name, func(b *testing.B) {
			f := NewFake(benchOpts, append(c.before.devs(), c.after.devs()...)...)
			for id, rs := range c.before {
				if err := f.Apply(ctx, benchDev(id), rs); err != nil {
					b.Fatal(err)
				}
			}
			start := f.Stats()
			for _, id := range c.changed {
				var err error
				if rs := c.after[id]; rs != nil {
					err = f.Apply(ctx, benchDev(id), rs)
				} else {
					err = f.Remove(ctx, benchDev(id))
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			st := f.Stats().sub(start)
			fig := figuresOf(f, c.after.devs())
			b.ReportAllocs()
			defer benchCPU(b)()
			for b.Loop() {
				for _, id := range c.changed {
					if rs := c.after[id]; rs != nil {
						if _, err := Compile(rs, benchOpts); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
			b.ReportMetric(float64(len(c.after)+1), "ports")
			b.ReportMetric(float64(fig.filters), "filters")
			b.ReportMetric(float64(fig.hwRules), "hw-rules")
			b.ReportMetric(float64(changeWrites(st)), "writes")
			b.ReportMetric(float64(st.Dumps), "dumps")
			b.ReportMetric(float64(len(c.changed)), "rule-sets-changed")
		})
	}
}

// benchCPU reports the process CPU time per operation next to the wall
// time, which on a shared machine also counts waiting for a core (as
// policy's reportCPU). Use: defer benchCPU(b)().
func benchCPU(b *testing.B) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64(cpu()-start)/float64(b.N), "cpu-ns/op")
		}
	}
}

func addStats(a, b Stats) Stats {
	return Stats{a.Adds + b.Adds, a.Replaces + b.Replaces, a.Deletes + b.Deletes, a.Flushes + b.Flushes, a.Dumps + b.Dumps}
}

func unionPorts(before, after *Bridge) []string {
	seen := map[string]bool{}
	var out []string
	for _, d := range append(portOrder(before), portOrder(after)...) {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out
}

// portChange runs the real reconciler's ApplyBridge(before) then
// ApplyBridge(after) over a kernel that has only the device dev: the other
// ports fail with ENODEV and ApplyBridge goes on (it applies port by port,
// each independently), so this returns the writes of the change on dev
// alone and dev's filters after it. A whole 110-pod bridge holds millions
// of filters, too many to keep at once; summed over the ports, this is
// ApplyBridge's cost (TestPortChangeSumsToApplyBridge checks it).
func portChange(tb testing.TB, before, after *Bridge, dev string) (Stats, placementFigures) {
	tb.Helper()
	k := newIndexedKernel(dev)
	r := newReconciler(k, benchOpts, nil)
	ctx := context.Background()
	for i, b := range []*Bridge{before, after} {
		_, rest := PortErrors(r.ApplyBridge(ctx, b))
		for _, err := range rest {
			if !errors.Is(err, ErrNoDevice) {
				tb.Fatalf("port %s: ApplyBridge %d: %v", dev, i, err)
			}
		}
		if i == 0 {
			r.stats = Stats{}
		}
	}
	var fig placementFigures
	for _, h := range []Hook{HookIngress, HookEgress} {
		fs, err := k.list(dev, h)
		if err != nil {
			tb.Fatal(err)
		}
		fig.filters += len(fs)
		fig.hwRules += len(benchOpts.Profile.Offloaded(fs))
		fig.hwLean += leanHardware(fs, slices.Contains(after.Uplinks, dev))
	}
	return r.stats, fig
}

// indexedKernel is fakeKernel's in-memory kernel with the same rules
// (devices must exist, clsact must be present, a handle is unique in its
// (chain, prio), a prio has one protocol, two filters of a prio never have
// the same keys, skip_sw is refused, deleting what is not there fails),
// indexed so that ports of tens of thousands of filters are written in
// linear time; fakeKernel scans a device's filters on every write.
type indexedKernel struct {
	devs map[string]*indexedDev
}

type indexedDev struct {
	clsact bool
	tps    map[tpKey]*indexedTP
}

type indexedTP struct {
	proto    uint16
	byHandle map[uint32]*Filter
	byMatch  map[string]uint32
}

func newIndexedKernel(devs ...string) *indexedKernel {
	k := &indexedKernel{devs: map[string]*indexedDev{}}
	for _, d := range devs {
		k.devs[d] = &indexedDev{tps: map[tpKey]*indexedTP{}}
	}
	return k
}

func (k *indexedKernel) dev(name string) (*indexedDev, error) {
	if d := k.devs[name]; d != nil {
		return d, nil
	}
	return nil, fmt.Errorf("representor %s: %w: %w", name, ErrNoDevice, syscall.ENODEV)
}

func (k *indexedKernel) ensureClsact(dev string) error {
	d, err := k.dev(dev)
	if err == nil {
		d.clsact = true
	}
	return err
}

func (k *indexedKernel) hasClsact(dev string) (bool, error) {
	d, err := k.dev(dev)
	return err == nil && d.clsact, err
}

func (k *indexedKernel) list(dev string, h Hook) ([]*Filter, error) {
	d, err := k.dev(dev)
	if err != nil {
		return nil, err
	}
	var out []*Filter
	for key, tp := range d.tps {
		if key.Hook == h {
			for _, f := range tp.byHandle {
				out = append(out, cloneFilter(f))
			}
		}
	}
	sortFilters(out)
	return out, nil
}

func (k *indexedKernel) create(dev string, f *Filter, replace bool) error {
	op := "add"
	if replace {
		op = "replace"
	}
	d, err := k.dev(dev)
	if err != nil {
		return err
	}
	if !d.clsact || f.Handle == 0 {
		return opError(op, dev, f, syscall.EINVAL)
	}
	tp := d.tps[f.tp()]
	if tp != nil && tp.proto != f.Protocol {
		return opError(op, dev, f, syscall.EINVAL)
	}
	if tp == nil {
		tp = &indexedTP{proto: f.Protocol, byHandle: map[uint32]*Filter{}, byMatch: map[string]uint32{}}
	}
	old := tp.byHandle[f.Handle]
	if old != nil && !replace {
		return opError(op, dev, f, syscall.EEXIST)
	}
	m := f.matchString()
	if h, dup := tp.byMatch[m]; dup && h != f.Handle {
		return opError(op, dev, f, syscall.EEXIST)
	}
	if f.Flags&flagSkipSW != 0 {
		return opError(op, dev, f, syscall.EOPNOTSUPP)
	}
	if old != nil {
		delete(tp.byMatch, old.matchString())
	}
	c := cloneFilter(f)
	c.InHW = false
	tp.byHandle[f.Handle], tp.byMatch[m] = c, f.Handle
	d.tps[f.tp()] = tp
	return nil
}

func (k *indexedKernel) add(dev string, f *Filter) error     { return k.create(dev, f, false) }
func (k *indexedKernel) replace(dev string, f *Filter) error { return k.create(dev, f, true) }

func (k *indexedKernel) del(dev string, f *Filter) error {
	d, err := k.dev(dev)
	if err != nil {
		return err
	}
	tp := d.tps[f.tp()]
	if tp == nil || tp.byHandle[f.Handle] == nil {
		return opError("delete", dev, f, syscall.ENOENT)
	}
	delete(tp.byMatch, tp.byHandle[f.Handle].matchString())
	delete(tp.byHandle, f.Handle)
	if len(tp.byHandle) == 0 {
		delete(d.tps, f.tp())
	}
	return nil
}

func (k *indexedKernel) flushChain(dev string, h Hook, chain uint32) error {
	d, err := k.dev(dev)
	if err != nil {
		return err
	}
	for key := range d.tps {
		if key.Hook == h && key.Chain == chain {
			delete(d.tps, key)
		}
	}
	return nil
}

// sharedFigures are the figures of the shared-block alternative.
type sharedFigures struct{ filters, hwRules, writes int }

// sharedBlock computes the shared-block alternative from the per-port
// programs: one block bound to all N+1 ports holds one demultiplexing
// filter per port (indev, chain 0: mlx5 offloads an indev match only on
// the named port, so one hardware rule each) and one copy of every distinct
// section: each pod's sender section, one dispatch chain for pod ports and
// one for the uplink, each receiver section once per kind (tracked, behind
// a pod's port; whole, behind the uplink). mlx5 installs every other
// filter once per bound port. A change writes the difference between the
// copies.
func sharedBlock(before, after *Bridge) sharedFigures {
	opts := benchOpts.withDefaults()
	copyOf := func(b *Bridge) map[string]bool {
		out := map[string]bool{}
		for _, dev := range portOrder(b) {
			prog := &BridgeProgram{Ports: map[string]*hookProgram{dev: compilePort(b, dev, opts, nil)}, opts: opts}
			for k := range sectionKeys(prog, dev, slices.Contains(b.Uplinks, dev)) {
				out[k] = true
			}
			out["demux "+dev] = true
		}
		return out
	}
	was, now := copyOf(before), copyOf(after)
	var fig sharedFigures
	ports := len(after.Ports) + len(after.Uplinks)
	for k := range now {
		fig.filters++
		switch {
		case strings.HasPrefix(k, "demux "):
			fig.hwRules++
		case !strings.Contains(k, " sw "):
			fig.hwRules += ports
		}
		if !was[k] {
			fig.writes++
		}
	}
	for k := range was {
		if !now[k] {
			fig.writes++
		}
	}
	return fig
}

// sectionKeys names each filter of a port's program by the section it
// belongs to (independent of the port and of the section's number), its
// place in the section, its keys and its actions (goto targets likewise),
// and whether mlx5-6.3 offloads it ("hw"/"sw").
func sectionKeys(prog *BridgeProgram, dev string, uplink bool) map[string]bool {
	base := prog.opts.slotBase(0)
	fs := prog.Filters(dev)
	// Receiver sections by number, named by their pod's MAC (the entries
	// that lead to them match it).
	rxName := map[int]string{}
	for _, f := range fs {
		for _, a := range f.Actions {
			if a.Kind == ActGoto && a.Chain >= base+chainReceivers && f.Match.DstMACMask == exactMAC {
				_, k, _ := benchSectionOf(a.Chain - base)
				rxName[k] = "rx " + f.Match.DstMAC.String()
			}
		}
	}
	name := func(chain uint32) string {
		if chain < base {
			return "entry"
		}
		kind, k, rel := benchSectionOf(chain - base)
		s := kind
		switch kind {
		case "sender":
			s = "sender " + dev
		case "receiver":
			s = rxName[k]
		}
		if uplink {
			s = "uplink-" + s
		}
		return fmt.Sprintf("%s+%d", s, rel)
	}
	out := map[string]bool{}
	for _, f := range fs {
		if f.Chain < base && !uplink {
			continue // a pod port's entry filter: replaced by the demux
		}
		var acts []string
		for _, a := range f.Actions {
			if a.Kind == ActGoto {
				acts = append(acts, "goto "+name(a.Chain))
			} else {
				acts = append(acts, a.String())
			}
		}
		hw := "sw"
		if ok, _ := benchOpts.Profile.Offloads(f); ok {
			hw = "hw"
		}
		// A set: a pod port's dispatch has no entry for its own MAC, the
		// union of the ports' dispatch chains has every pod's.
		out[fmt.Sprintf("%s %s pref %d %s %s %s", name(f.Chain), hw, f.Prio, ethName(f.Protocol), f.matchString(), strings.Join(acts, ","))] = true
	}
	return out
}

// TestPortChangeSumsToApplyBridge: the port-by-port measure of
// BenchmarkBridgePlacement, over indexedKernel, equals the writes, dumps
// and filters of one ApplyBridge over the Fake, on small random bridges and
// the changes the benchmark makes (a pod added and removed, a peer added,
// a rule added).
func TestPortChangeSumsToApplyBridge(t *testing.T) {
	rng := rand.New(rand.NewSource(77))
	ctx := context.Background()
	for round := 0; round < 12; round++ {
		base := benchState{}
		for i := 0; i < 2+rng.Intn(5); i++ {
			rs := randRuleSet(rng)
			rs.Attachment.PodName = fmt.Sprintf("pod%d", i)
			base[rs.Attachment.ID()] = rs
		}
		added := cloneState(base)
		extra := randRuleSet(rng)
		extra.Attachment.PodName = "extra"
		added[extra.Attachment.ID()] = extra
		changes := []*benchChange{{name: "pod-added", before: base, after: added}, {name: "pod-removed", before: added, after: base}}
		for _, id := range slices.Sorted(maps.Keys(base)) {
			if rs := base[id]; rs.Ingress.Isolated && len(rs.Ingress.Rules) > 0 && !rs.Ingress.Rules[0].AnyPeer {
				peer, rule := cloneState(base), cloneState(base)
				peer[id] = cloneRuleSet(rs)
				peer[id].Ingress.Rules[0].Peers = append(peer[id].Ingress.Rules[0].Peers, netip.MustParsePrefix("10.99.0.1/32"))
				rule[id] = cloneRuleSet(rs)
				rule[id].Ingress.Rules = append(rule[id].Ingress.Rules, policy.Rule{Peers: []netip.Prefix{netip.MustParsePrefix("10.99.0.0/24")},
					Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 7777, EndPort: 7777}}})
				changes = append(changes, &benchChange{name: "peer-added", before: base, after: peer}, &benchChange{name: "rule-added", before: base, after: rule})
				break
			}
		}
		for _, c := range changes {
			before, after := c.before.bridge(), c.after.bridge()
			devs := unionPorts(before, after)
			f := NewFake(benchOpts, devs...)
			if err := f.ApplyBridge(ctx, before); err != nil {
				t.Fatal(err)
			}
			if err := f.ApplyBridge(ctx, after); err != nil {
				t.Fatal(err)
			}
			want := f.LastApply()
			wantFig := figuresOf(f, devs)
			var got Stats
			var gotFig placementFigures
			for _, dev := range devs {
				s, fg := portChange(t, before, after, dev)
				got = addStats(got, s)
				gotFig.filters += fg.filters
				gotFig.hwRules += fg.hwRules
			}
			if got != want || gotFig != wantFig {
				t.Fatalf("round %d %s: port by port %+v %+v, ApplyBridge %+v %+v", round, c.name, got, gotFig, want, wantFig)
			}
		}
	}
}
