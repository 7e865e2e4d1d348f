// Package policytest generates random but realistic policy scenarios —
// namespaces, NADs, pods with network-status, MultiNetworkPolicies with
// every kind of peer and port, including invalid ones — and random packets
// aimed at them. Tests of the policy core, the TC compiler and the kernel
// datapath use it to compare their verdicts with policy.Evaluate.
package policytest

import (
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// Network is one generated secondary network and its address ranges.
type Network struct {
	Ref      policy.NetworkRef
	Plugin   string
	V4Prefix netip.Prefix
	V6Prefix netip.Prefix
}

// Scenario is a generated cluster.
type Scenario struct {
	Objects     policy.Objects
	Options     policy.Options
	Networks    []Network
	Attachments []policy.Attachment
}

// Config bounds the size of generated scenarios.
type Config struct {
	Pods     int // default 8
	Policies int // upper bound, default 4
	// Invalid enables malformed fields (bad CIDRs, protocols, selectors).
	Invalid bool
}

var (
	namespaces = []string{"ns1", "ns2", "ns3"}
	apps       = []string{"web", "db", "cache"}
	tiers      = []string{"fe", "be"}
	teams      = []string{"a", "b"}
	portNames  = []struct {
		name  string
		proto corev1.Protocol
		ports []int32 // a pod exposes the name on one of these
	}{
		{"http", corev1.ProtocolTCP, []int32{80, 8080}},
		{"dns", corev1.ProtocolUDP, []int32{53, 5353}},
		{"sig", corev1.ProtocolSCTP, []int32{9999}},
	}
	// Ports packets and policies pick from, so that they meet often.
	interestingPorts = []uint16{53, 80, 443, 1000, 1005, 1010, 5353, 8080, 9999}
)

// Generate returns a random scenario.
func Generate(rng *rand.Rand, cfg Config) *Scenario {
	if cfg.Pods == 0 {
		cfg.Pods = 8
	}
	if cfg.Policies == 0 {
		cfg.Policies = 4
	}
	g := &gen{rng: rng, cfg: cfg}
	s := &Scenario{
		Options: policy.Options{AcceptICMP: rng.IntN(2) == 0, AcceptICMPv6: rng.IntN(2) == 0},
		Networks: []Network{
			{policy.NetworkRef{Namespace: "ns1", Name: "sriov-a"}, "accelerated-bridge",
				netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("fd00:1::/64")},
			{policy.NetworkRef{Namespace: "ns2", Name: "sriov-b"}, "accelerated-bridge",
				netip.MustParsePrefix("10.2.0.0/24"), netip.MustParsePrefix("fd00:2::/64")},
			{policy.NetworkRef{Namespace: "ns1", Name: "macvlan"}, "macvlan",
				netip.MustParsePrefix("10.3.0.0/24"), netip.MustParsePrefix("fd00:3::/64")},
		},
	}
	g.s = s
	for _, ns := range namespaces {
		s.Objects.Namespaces = append(s.Objects.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: g.labels(map[string][]string{"team": teams, "env": {"prod", "dev"}}),
		}})
	}
	for _, n := range s.Networks {
		s.Objects.NADs = append(s.Objects.NADs, NAD(n.Ref, n.Plugin))
	}
	for i := range cfg.Pods {
		s.Objects.Pods = append(s.Objects.Pods, g.pod(i))
	}
	for i := range 1 + rng.IntN(cfg.Policies) {
		s.Objects.Policies = append(s.Objects.Policies, g.policy(i))
	}
	for _, p := range s.Objects.Pods {
		atts, err := policy.PodAttachments(p)
		if err != nil {
			panic(err) // generated annotations are always valid
		}
		s.Attachments = append(s.Attachments, atts...)
	}
	return s
}

// NAD returns a NetworkAttachmentDefinition of the given plugin type.
func NAD(ref policy.NetworkRef, plugin string) *nadv1.NetworkAttachmentDefinition {
	return &nadv1.NetworkAttachmentDefinition{
		ObjectMeta: metav1.ObjectMeta{Namespace: ref.Namespace, Name: ref.Name,
			Annotations: map[string]string{"k8s.v1.cni.cncf.io/resourceName": "mellanox.com/cx6dx_vf"}},
		Spec: nadv1.NetworkAttachmentDefinitionSpec{
			Config: fmt.Sprintf(`{"cniVersion":"0.4.0","name":%q,"type":%q}`, ref.Name, plugin),
		},
	}
}

// Engine returns an engine loaded with the scenario.
func (s *Scenario) Engine() *policy.Engine {
	e := policy.NewEngine(s.Options)
	for _, o := range s.Objects.Namespaces {
		e.UpsertNamespace(o)
	}
	for _, o := range s.Objects.NADs {
		e.UpsertNAD(o)
	}
	for _, o := range s.Objects.Pods {
		e.UpsertPod(o)
	}
	for _, o := range s.Objects.Policies {
		e.UpsertPolicy(o)
	}
	e.SetAttachments(s.Attachments)
	return e
}

// Reference evaluates a packet with the reference evaluator.
func (s *Scenario) Reference(att policy.Attachment, pkt policy.Packet) bool {
	return policy.Evaluate(&s.Objects, s.Options, att, pkt)
}

// Network returns the generated network of an attachment.
func (s *Scenario) Network(ref policy.NetworkRef) Network {
	for _, n := range s.Networks {
		if n.Ref == ref {
			return n
		}
	}
	panic("unknown network " + ref.String())
}

// RandomPacket returns a packet for att whose remote address is likely to
// matter: another pod's address on the network, an address near the
// network's ranges, or anywhere.
func (s *Scenario) RandomPacket(rng *rand.Rand, att policy.Attachment) policy.Packet {
	n := s.Network(att.Network)
	v6 := rng.IntN(3) == 0
	var remote netip.Addr
	switch rng.IntN(3) {
	case 0: // a pod's address on this network
		var addrs []netip.Addr
		for _, p := range s.Objects.Pods {
			for _, a := range podAddrs(p, att.Network) {
				if a.Is6() == v6 {
					addrs = append(addrs, a)
				}
			}
		}
		if len(addrs) > 0 {
			remote = addrs[rng.IntN(len(addrs))]
			break
		}
		fallthrough
	case 1: // the network's range
		remote = hostIn(rng, pick(v6, n.V6Prefix, n.V4Prefix), rng.IntN(16))
	default: // elsewhere
		if v6 {
			remote = hostIn(rng, netip.MustParsePrefix("fd00::/16"), rng.IntN(1<<16))
		} else {
			remote = hostIn(rng, netip.MustParsePrefix("10.0.0.0/14"), rng.IntN(1<<18))
		}
	}
	pkt := policy.Packet{Remote: remote, Direction: policy.Direction(rng.IntN(2))}
	switch rng.IntN(8) {
	case 0:
		pkt.Protocol = pick(v6, policy.ICMPv6, policy.ICMP)
	case 1, 2:
		pkt.Protocol = policy.UDP
	case 3:
		pkt.Protocol = policy.SCTP
	default:
		pkt.Protocol = policy.TCP
	}
	if pkt.Protocol != policy.ICMP && pkt.Protocol != policy.ICMPv6 {
		pkt.Port = interestingPorts[rng.IntN(len(interestingPorts))]
		if rng.IntN(5) == 0 {
			pkt.Port = uint16(1 + rng.IntN(65535))
		}
	}
	return pkt
}

func pick[T any](cond bool, a, b T) T {
	if cond {
		return a
	}
	return b
}

// hostIn returns the i-th address of prefix p (wrapping), never the network
// address itself.
func hostIn(rng *rand.Rand, p netip.Prefix, i int) netip.Addr {
	_ = rng
	a := p.Masked().Addr()
	for range 1 + i%250 {
		a = a.Next()
	}
	return a
}

func podAddrs(p *corev1.Pod, n policy.NetworkRef) []netip.Addr {
	var out []netip.Addr
	var statuses []nadv1.NetworkStatus
	_ = json.Unmarshal([]byte(p.Annotations[nadv1.NetworkStatusAnnot]), &statuses)
	for _, st := range statuses {
		if st.Name == n.String() {
			for _, ip := range st.IPs {
				out = append(out, netip.MustParseAddr(ip))
			}
		}
	}
	return out
}

type gen struct {
	rng *rand.Rand
	cfg Config
	s   *Scenario
	// next host number per network, so addresses are unique per network.
	nextHost map[policy.NetworkRef]int
}

func (g *gen) labels(vocab map[string][]string) map[string]string {
	out := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(vocab)) {
		if g.rng.IntN(4) != 0 {
			out[k] = vocab[k][g.rng.IntN(len(vocab[k]))]
		}
	}
	return out
}

func (g *gen) pod(i int) *corev1.Pod {
	ns := namespaces[g.rng.IntN(len(namespaces))]
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pod%d", i),
			Labels: g.labels(map[string][]string{"app": apps, "tier": tiers}), Annotations: map[string]string{}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	switch g.rng.IntN(12) {
	case 0:
		p.Status.Phase = corev1.PodPending
	case 1:
		p.Spec.HostNetwork = true
	}
	c := corev1.Container{Name: "main"}
	for _, pn := range portNames {
		if g.rng.IntN(2) == 0 {
			c.Ports = append(c.Ports, corev1.ContainerPort{Name: pn.name, Protocol: pn.proto, ContainerPort: pn.ports[g.rng.IntN(len(pn.ports))]})
		}
	}
	p.Spec.Containers = []corev1.Container{c}

	var selections []string
	var statuses []nadv1.NetworkStatus
	var static []map[string]any
	useStatic := g.rng.IntN(6) == 0
	for _, n := range g.s.Networks {
		if g.rng.IntN(3) == 0 {
			continue
		}
		if g.nextHost == nil {
			g.nextHost = map[policy.NetworkRef]int{}
		}
		g.nextHost[n.Ref]++
		h := g.nextHost[n.Ref]
		ips := []string{nth(n.V4Prefix, 10+h).String()}
		if g.rng.IntN(2) == 0 {
			ips = append(ips, nth(n.V6Prefix, 10+h).String())
		}
		selections = append(selections, n.Ref.String())
		if useStatic {
			cidrs := make([]string, len(ips))
			for i, ip := range ips {
				cidrs[i] = ip + pick(strings.Contains(ip, ":"), "/64", "/24")
			}
			static = append(static, map[string]any{"name": n.Ref.Name, "namespace": n.Ref.Namespace, "ips": cidrs})
		} else {
			statuses = append(statuses, nadv1.NetworkStatus{Name: n.Ref.String(), Interface: fmt.Sprintf("net%d", len(selections)), IPs: ips})
		}
	}
	if len(selections) == 0 {
		return p
	}
	if useStatic {
		b, _ := json.Marshal(static)
		p.Annotations[nadv1.NetworkAttachmentAnnot] = string(b)
	} else {
		p.Annotations[nadv1.NetworkAttachmentAnnot] = strings.Join(selections, ",")
		b, _ := json.Marshal(append([]nadv1.NetworkStatus{{Name: "cbr0", Default: true, IPs: []string{"192.168.0.1"}}}, statuses...))
		p.Annotations[nadv1.NetworkStatusAnnot] = string(b)
	}
	return p
}

func nth(p netip.Prefix, n int) netip.Addr {
	a := p.Masked().Addr()
	for range n {
		a = a.Next()
	}
	return a
}

func (g *gen) policy(i int) *mnpv1beta1.MultiNetworkPolicy {
	ns := namespaces[g.rng.IntN(len(namespaces))]
	p := &mnpv1beta1.MultiNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("policy%d", i), Annotations: map[string]string{}},
	}
	var nets []string
	for _, n := range g.s.Networks {
		if g.rng.IntN(2) == 0 {
			continue
		}
		if n.Ref.Namespace == ns && g.rng.IntN(2) == 0 {
			nets = append(nets, n.Ref.Name)
		} else {
			nets = append(nets, n.Ref.String())
		}
	}
	if len(nets) > 0 || g.rng.IntN(5) != 0 {
		p.Annotations[policy.PolicyForAnnotation] = strings.Join(nets, pick(g.rng.IntN(2) == 0, ", ", ","))
	}
	p.Spec.PodSelector = g.selector(map[string][]string{"app": apps, "tier": tiers}, true)
	switch g.rng.IntN(4) {
	case 1:
		p.Spec.PolicyTypes = []mnpv1beta1.MultiPolicyType{mnpv1beta1.PolicyTypeIngress}
	case 2:
		p.Spec.PolicyTypes = []mnpv1beta1.MultiPolicyType{mnpv1beta1.PolicyTypeEgress}
	case 3:
		p.Spec.PolicyTypes = []mnpv1beta1.MultiPolicyType{mnpv1beta1.PolicyTypeIngress, mnpv1beta1.PolicyTypeEgress}
	}
	for range g.rng.IntN(3) {
		p.Spec.Ingress = append(p.Spec.Ingress, mnpv1beta1.MultiNetworkPolicyIngressRule{From: g.peers(), Ports: g.ports()})
	}
	for range g.rng.IntN(3) {
		p.Spec.Egress = append(p.Spec.Egress, mnpv1beta1.MultiNetworkPolicyEgressRule{To: g.peers(), Ports: g.ports()})
	}
	return p
}

// selector returns a random label selector; with allowEmpty it may select
// everything.
func (g *gen) selector(vocab map[string][]string, allowEmpty bool) metav1.LabelSelector {
	var sel metav1.LabelSelector
	if allowEmpty && g.rng.IntN(3) == 0 {
		return sel
	}
	keys := slices.Sorted(maps.Keys(vocab))
	k := keys[g.rng.IntN(len(keys))]
	vals := vocab[k]
	switch g.rng.IntN(6) {
	case 0, 1:
		sel.MatchLabels = map[string]string{k: vals[g.rng.IntN(len(vals))]}
	case 2:
		sel.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: k, Operator: metav1.LabelSelectorOpIn, Values: []string{vals[g.rng.IntN(len(vals))]}}}
	case 3:
		sel.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: k, Operator: metav1.LabelSelectorOpNotIn, Values: []string{vals[g.rng.IntN(len(vals))]}}}
	case 4:
		sel.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: k, Operator: metav1.LabelSelectorOpExists}}
	default:
		sel.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: k, Operator: metav1.LabelSelectorOpDoesNotExist}}
	}
	if g.cfg.Invalid && g.rng.IntN(15) == 0 {
		sel.MatchExpressions = append(sel.MatchExpressions, metav1.LabelSelectorRequirement{Key: k, Operator: "Matches", Values: []string{"x"}})
	}
	return sel
}

func (g *gen) peers() []mnpv1beta1.MultiNetworkPolicyPeer {
	var out []mnpv1beta1.MultiNetworkPolicyPeer
	for range g.rng.IntN(3) {
		var peer mnpv1beta1.MultiNetworkPolicyPeer
		switch g.rng.IntN(4) {
		case 0:
			peer.IPBlock = g.ipBlock()
		case 1:
			s := g.selector(map[string][]string{"app": apps, "tier": tiers}, true)
			peer.PodSelector = &s
		case 2:
			s := g.selector(map[string][]string{"team": teams, "env": {"prod", "dev"}}, true)
			peer.NamespaceSelector = &s
		default:
			s := g.selector(map[string][]string{"app": apps, "tier": tiers}, true)
			n := g.selector(map[string][]string{"team": teams, "env": {"prod", "dev"}}, true)
			peer.PodSelector, peer.NamespaceSelector = &s, &n
		}
		out = append(out, peer)
	}
	return out
}

func (g *gen) ipBlock() *mnpv1beta1.IPBlock {
	n := g.s.Networks[g.rng.IntN(len(g.s.Networks))]
	v6 := g.rng.IntN(3) == 0
	base := pick(v6, n.V6Prefix, n.V4Prefix)
	bits := base.Bits() + g.rng.IntN(5)
	cidr := netip.PrefixFrom(nth(base, 8*g.rng.IntN(4)), bits).Masked()
	if g.rng.IntN(6) == 0 {
		cidr = pick(v6, netip.MustParsePrefix("::/0"), netip.MustParsePrefix("0.0.0.0/0"))
	}
	b := &mnpv1beta1.IPBlock{CIDR: cidr.String()}
	for range g.rng.IntN(3) {
		eb := min(cidr.Addr().BitLen(), max(bits, cidr.Bits())+1+g.rng.IntN(4))
		ex := netip.PrefixFrom(nth(base, 10+g.rng.IntN(12)), eb).Masked()
		if !cidr.Contains(ex.Addr()) {
			continue
		}
		b.Except = append(b.Except, ex.String())
	}
	if g.cfg.Invalid {
		switch g.rng.IntN(20) {
		case 0:
			b.CIDR = "10.1.0.300/24"
		case 1:
			b.Except = append(b.Except, "192.168.99.0/24") // outside the cidr
		}
	}
	return b
}

func (g *gen) ports() []mnpv1beta1.MultiNetworkPolicyPort {
	var out []mnpv1beta1.MultiNetworkPolicyPort
	for range g.rng.IntN(3) {
		var port mnpv1beta1.MultiNetworkPolicyPort
		protos := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
		if g.rng.IntN(4) != 0 {
			pr := protos[g.rng.IntN(len(protos))]
			port.Protocol = &pr
		}
		switch g.rng.IntN(5) {
		case 0: // protocol only
		case 1: // named
			pn := portNames[g.rng.IntN(len(portNames))]
			v := intstr.FromString(pn.name)
			port.Port = &v
			if port.Protocol == nil || g.rng.IntN(2) == 0 {
				pr := pn.proto
				port.Protocol = &pr
			}
		case 2: // range
			lo := int32(interestingPorts[g.rng.IntN(len(interestingPorts))])
			end := lo + int32(g.rng.IntN(20))
			v := intstr.FromInt32(lo)
			port.Port, port.EndPort = &v, &end
		default:
			v := intstr.FromInt32(int32(interestingPorts[g.rng.IntN(len(interestingPorts))]))
			port.Port = &v
		}
		if g.cfg.Invalid {
			switch g.rng.IntN(25) {
			case 0:
				pr := corev1.Protocol("ICMP")
				port.Protocol = &pr
			case 1:
				v, end := intstr.FromInt32(1010), int32(1000)
				port.Port, port.EndPort = &v, &end
			case 2:
				end := int32(90)
				port.Port, port.EndPort = nil, &end
			}
		}
		out = append(out, port)
	}
	return out
}
