package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// PolicyForAnnotation names the networks a MultiNetworkPolicy applies to.
const PolicyForAnnotation = "k8s.v1.cni.cncf.io/policy-for"

// policyInfo is a MultiNetworkPolicy parsed once per update. Every invalid
// part is recorded in errs and parsed to "matches nothing".
type policyInfo struct {
	namespace string
	name      string
	networks  map[NetworkRef]bool
	// podSelector is nil when spec.podSelector is invalid: the policy then
	// selects every pod of its namespace and allows nothing (fail closed).
	podSelector labels.Selector
	isolates    [2]bool // by Direction
	rules       [2][]ruleInfo
	errs        []error
	cache       resolutionCache
	// crossNamespace: pods of other namespaces can be peers (a
	// namespaceSelector, or egress named ports resolved by address).
	crossNamespace bool
}

// resolutionCache holds what the policy's rules resolve to on each network.
// It depends on pods and namespaces, and is dropped whenever one that may
// concern the policy changes.
type resolutionCache struct {
	rules    map[ruleOnNetwork]*resolvedRule
	peerPods map[*peerInfo][]*podInfo
}

type ruleInfo struct {
	origin string
	// anyPeer: the rule has no from/to, every address is a peer.
	anyPeer bool
	peers   []peerInfo
	// allPorts: the rule has no ports. Otherwise only ports and namedPorts
	// (the valid entries of spec ports) match, possibly none.
	allPorts   bool
	ports      []PortMatch
	namedPorts []namedPort
}

type namedPort struct {
	protocol Protocol
	name     string
}

type peerKind int

const (
	peerInvalid peerKind = iota
	peerIPBlock
	peerPods
)

type peerInfo struct {
	kind peerKind
	// ipBlock: cidr minus excepts.
	block *prefixSet
	// pods: podSelector (nil: every pod) in the namespaces matched by
	// nsSelector (nil: only the policy's namespace).
	podSelector     labels.Selector
	nsSelector      labels.Selector
	policyNamespace string
}

func newPolicyInfo(p *mnpv1beta1.MultiNetworkPolicy) *policyInfo {
	info := &policyInfo{namespace: p.Namespace, name: p.Name, networks: map[NetworkRef]bool{}}
	info.parseNetworks(p.Annotations[PolicyForAnnotation])

	if sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector); err != nil {
		info.fail("spec.podSelector", fmt.Errorf("%w (the policy isolates every pod of its namespace and allows nothing until fixed)", err))
	} else {
		info.podSelector = sel
	}
	info.parseTypes(p.Spec)

	for i, r := range p.Spec.Ingress {
		info.rules[Ingress] = append(info.rules[Ingress], info.parseRule(fmt.Sprintf("spec.ingress[%d]", i), "from", r.From, r.Ports))
	}
	for i, r := range p.Spec.Egress {
		info.rules[Egress] = append(info.rules[Egress], info.parseRule(fmt.Sprintf("spec.egress[%d]", i), "to", r.To, r.Ports))
	}
	if info.podSelector == nil {
		info.rules = [2][]ruleInfo{}
	}
	info.crossNamespace = info.peersCrossNamespaces()
	return info
}

func (p *policyInfo) peersCrossNamespaces() bool {
	for d := range p.rules {
		for _, r := range p.rules[d] {
			if d == int(Egress) && len(r.namedPorts) > 0 &&
				(r.anyPeer || slices.ContainsFunc(r.peers, func(peer peerInfo) bool { return peer.kind == peerIPBlock })) {
				return true
			}
			if slices.ContainsFunc(r.peers, func(peer peerInfo) bool { return peer.kind == peerPods && peer.nsSelector != nil }) {
				return true
			}
		}
	}
	return false
}

func (p *policyInfo) key() string { return key(p.namespace, p.name) }

func (p *policyInfo) fail(field string, err error) {
	p.errs = append(p.errs, &InputError{Kind: "MultiNetworkPolicy", Namespace: p.namespace, Name: p.name, Field: field, Err: err})
}

// parseNetworks reads policy-for: a comma list, spaces ignored, of "name"
// (in the policy's namespace) or "namespace/name". Without it the policy
// applies to nothing.
func (p *policyInfo) parseNetworks(v string) {
	field := "metadata.annotations[" + PolicyForAnnotation + "]"
	for item := range strings.SplitSeq(v, ",") {
		item = strings.Join(strings.Fields(item), "")
		if item == "" {
			continue
		}
		ref, err := ParseNetworkRef(item, p.namespace)
		if err != nil {
			p.fail(field, err)
			continue
		}
		p.networks[ref] = true
	}
}

// parseTypes applies the NetworkPolicy rule: explicit policyTypes are
// honoured; without them Ingress always, Egress only with egress rules.
func (p *policyInfo) parseTypes(spec mnpv1beta1.MultiNetworkPolicySpec) {
	if len(spec.PolicyTypes) == 0 {
		p.isolates[Ingress] = true
		p.isolates[Egress] = len(spec.Egress) > 0
		return
	}
	for i, t := range spec.PolicyTypes {
		switch t {
		case mnpv1beta1.PolicyTypeIngress:
			p.isolates[Ingress] = true
		case mnpv1beta1.PolicyTypeEgress:
			p.isolates[Egress] = true
		default:
			// Unknown type: isolate both directions, allowing only what the
			// rules allow, rather than guess the author meant neither.
			p.fail(fmt.Sprintf("spec.policyTypes[%d]", i), fmt.Errorf("unknown policy type %q (want Ingress or Egress)", t))
			p.isolates = [2]bool{true, true}
		}
	}
}

func (p *policyInfo) parseRule(field, peersName string, peers []mnpv1beta1.MultiNetworkPolicyPeer, ports []mnpv1beta1.MultiNetworkPolicyPort) ruleInfo {
	r := ruleInfo{origin: p.key() + " " + strings.TrimPrefix(field, "spec."), anyPeer: len(peers) == 0, allPorts: len(ports) == 0}
	for i := range peers {
		r.peers = append(r.peers, p.parsePeer(fmt.Sprintf("%s.%s[%d]", field, peersName, i), &peers[i]))
	}
	for i, port := range ports {
		f := fmt.Sprintf("%s.ports[%d]", field, i)
		pm, named, err := parsePort(port)
		if err != nil {
			p.fail(f, fmt.Errorf("%w (this port matches nothing)", err))
			continue
		}
		if named != nil {
			r.namedPorts = append(r.namedPorts, *named)
		} else {
			r.ports = append(r.ports, pm)
		}
	}
	return r
}

func (p *policyInfo) parsePeer(field string, peer *mnpv1beta1.MultiNetworkPolicyPeer) peerInfo {
	bad := func(f string, err error) peerInfo {
		p.fail(f, fmt.Errorf("%w (this peer matches nothing)", err))
		return peerInfo{kind: peerInvalid}
	}
	if peer.IPBlock != nil {
		if peer.PodSelector != nil || peer.NamespaceSelector != nil {
			return bad(field, errors.New("ipBlock cannot be combined with podSelector or namespaceSelector"))
		}
		block, f, err := parseIPBlock(peer.IPBlock)
		if err != nil {
			return bad(field+".ipBlock."+f, err)
		}
		return peerInfo{kind: peerIPBlock, block: block}
	}
	if peer.PodSelector == nil && peer.NamespaceSelector == nil {
		return bad(field, errors.New("peer has none of podSelector, namespaceSelector, ipBlock"))
	}
	out := peerInfo{kind: peerPods, policyNamespace: p.namespace}
	if peer.PodSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		if err != nil {
			return bad(field+".podSelector", err)
		}
		out.podSelector = sel
	}
	if peer.NamespaceSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil {
			return bad(field+".namespaceSelector", err)
		}
		out.nsSelector = sel
	}
	return out
}

// parseIPBlock returns cidr minus every except. An except must lie inside
// the cidr, as the NetworkPolicy API requires.
func parseIPBlock(b *mnpv1beta1.IPBlock) (*prefixSet, string, error) {
	cidr, err := netip.ParsePrefix(strings.TrimSpace(b.CIDR))
	if err != nil {
		return nil, "cidr", fmt.Errorf("malformed CIDR %q", b.CIDR)
	}
	set := &prefixSet{}
	set.addPrefix(cidr)
	except := &prefixSet{}
	for i, e := range b.Except {
		ex, err := netip.ParsePrefix(strings.TrimSpace(e))
		if err != nil {
			return nil, fmt.Sprintf("except[%d]", i), fmt.Errorf("malformed CIDR %q", e)
		}
		if ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() < cidr.Bits() || !cidr.Masked().Contains(ex.Addr()) {
			return nil, fmt.Sprintf("except[%d]", i), fmt.Errorf("%q is not inside cidr %q", e, b.CIDR)
		}
		except.addPrefix(ex)
	}
	except.normalize()
	set.subtract(except)
	set.normalize()
	return set, "", nil
}

// parsePort returns either a numeric match or a named port to resolve.
func parsePort(port mnpv1beta1.MultiNetworkPolicyPort) (PortMatch, *namedPort, error) {
	proto := TCP
	if port.Protocol != nil {
		proto = Protocol(*port.Protocol)
		switch proto {
		case TCP, UDP, SCTP:
		default:
			return PortMatch{}, nil, fmt.Errorf("unknown protocol %q (want TCP, UDP or SCTP)", *port.Protocol)
		}
	}
	if port.Port == nil {
		if port.EndPort != nil {
			return PortMatch{}, nil, errors.New("endPort requires port")
		}
		return PortMatch{Protocol: proto}, nil, nil
	}
	if port.Port.Type == 1 { // intstr.String
		name := port.Port.StrVal
		if port.EndPort != nil {
			return PortMatch{}, nil, fmt.Errorf("endPort cannot be used with named port %q", name)
		}
		if errs := validation.IsValidPortName(name); len(errs) > 0 {
			return PortMatch{}, nil, fmt.Errorf("invalid port name %q: %s", name, strings.Join(errs, "; "))
		}
		return PortMatch{}, &namedPort{protocol: proto, name: name}, nil
	}
	n := port.Port.IntVal
	if n < 1 || n > 65535 {
		return PortMatch{}, nil, fmt.Errorf("port %d out of range 1-65535", n)
	}
	end := n
	if port.EndPort != nil {
		end = *port.EndPort
		if end < n || end > 65535 {
			return PortMatch{}, nil, fmt.Errorf("endPort %d must be between port %d and 65535", end, n)
		}
	}
	return PortMatch{Protocol: proto, Port: uint16(n), EndPort: uint16(end)}, nil, nil
}

// selects reports whether the policy applies to the pod (namespace and
// podSelector; the network is checked by the caller).
func (p *policyInfo) selects(pod *podInfo) bool {
	if pod.namespace != p.namespace {
		return false
	}
	return p.podSelector == nil || p.podSelector.Matches(pod.labels)
}
