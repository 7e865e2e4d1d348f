package policy

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// ErrUnknownPod is returned by Compute for an attachment whose pod the
// engine has not seen: its rules cannot be computed, and the caller must
// keep whatever it enforces now.
var ErrUnknownPod = errors.New("pod not known to the policy engine")

// computation evaluates rule sets over the state. What a rule means on a
// network does not depend on the attachment it is enforced for, so it is
// resolved once and cached on the policy (policyInfo.cache) until a pod or
// namespace change that concerns the policy invalidates it (affected.go).
type computation struct {
	s    *state
	opts Options
}

func newComputation(s *state, opts Options) *computation {
	return &computation{s: s, opts: opts}
}

func (c *computation) ruleSets(atts []Attachment) ([]*RuleSet, error) {
	out := make([]*RuleSet, 0, len(atts))
	var errs []error
	for _, a := range atts {
		rs, err := c.ruleSet(a)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a, err))
		}
		if rs != nil {
			out = append(out, rs)
		}
	}
	return out, errors.Join(errs...)
}

func (c *computation) ruleSet(att Attachment) (*RuleSet, error) {
	pod := c.s.pods[key(att.PodNamespace, att.PodName)]
	if pod == nil {
		return nil, ErrUnknownPod
	}
	if nad := c.s.nads[att.Network]; nad != nil && nad.err != nil {
		// Keep the rules in place: the network's type is unknowable.
		return nil, nad.err
	}
	rs := &RuleSet{Attachment: att}
	rs.Ingress.Stateful, rs.Egress.Stateful = true, true
	if !c.s.enforced(att.Network, c.opts.NetworkPlugins) {
		return rs, nil
	}
	errs := slices.Clone(pod.errs)
	policies := c.applicable(pod, att.Network)
	for _, p := range policies {
		errs = append(errs, p.errs...)
	}
	for _, d := range []Direction{Ingress, Egress} {
		dr := rs.Direction(d)
		b := newRuleBuilder()
		for _, p := range policies {
			if !p.isolates[d] {
				continue
			}
			dr.Isolated = true
			dr.Policies = append(dr.Policies, p.key())
			for i := range p.rules[d] {
				c.addRule(b, d, pod, att.Network, p, &p.rules[d][i])
			}
		}
		if dr.Isolated {
			dr.AcceptICMP, dr.AcceptICMPv6 = c.opts.AcceptICMP, c.opts.AcceptICMPv6
			dr.Rules = b.rules()
		}
	}
	return rs, errors.Join(errs...)
}

// applicable returns the policies that apply to the pod on network, sorted
// by key so that rendering is stable (their order has no meaning).
func (c *computation) applicable(pod *podInfo, network NetworkRef) []*policyInfo {
	var out []*policyInfo
	for _, p := range c.s.policiesNS[pod.namespace] {
		if p.networks[network] && p.selects(pod) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *policyInfo) int { return cmp.Compare(a.key(), b.key()) })
	return out
}

// addRule adds what one policy rule allows for the attachment of pod on
// network: the product of its peers and ports.
func (c *computation) addRule(b *ruleBuilder, d Direction, pod *podInfo, network NetworkRef, p *policyInfo, r *ruleInfo) {
	rr := c.resolveRule(p, r, network)
	if !r.anyPeer && rr.peers.empty() {
		return // no peer: the rule allows nothing
	}
	if r.allPorts {
		b.add(r.anyPeer, &rr.peers, nil, r.origin)
		return
	}
	ports := slices.Clone(r.ports)
	if d == Ingress {
		// Named ports resolve against the pod receiving the traffic.
		for _, np := range r.namedPorts {
			ports = append(ports, pod.resolve(np)...)
		}
	} else {
		for _, pm := range slices.SortedFunc(maps.Keys(rr.namedDests), comparePortMatch) {
			b.add(false, rr.namedDests[pm], []PortMatch{pm}, r.origin)
		}
	}
	if len(ports) > 0 {
		b.add(r.anyPeer, &rr.peers, ports, r.origin)
	}
}

// resolvedRule is what a rule means on one network, independent of the
// local pod it is enforced for; computed once and cached on the policy.
type resolvedRule struct {
	// blocks is the union of the rule's ipBlocks; podAddrs the addresses of
	// the pods its selectors pick, sorted, each with the number of (peer,
	// pod) selections that contribute it, so that a pod change can patch
	// it (podChanged) instead of resolving the rule again.
	blocks   prefixSet
	podAddrs []addrCount
	// peers is blocks ∪ podAddrs.
	peers prefixSet
	// namedDests: for egress named ports, the destination addresses per
	// resolved port.
	namedDests map[PortMatch]*prefixSet
}

type addrCount struct {
	addr netip.Addr
	n    int
}

type ruleOnNetwork struct {
	rule    *ruleInfo
	network NetworkRef
}

func (c *computation) resolveRule(p *policyInfo, r *ruleInfo, network NetworkRef) *resolvedRule {
	k := ruleOnNetwork{r, network}
	if rr, ok := p.cache.rules[k]; ok {
		return rr
	}
	rr := &resolvedRule{}
	if !r.anyPeer {
		var addrs []netip.Addr
		for i := range r.peers {
			switch peer := &r.peers[i]; peer.kind {
			case peerIPBlock:
				rr.blocks.addSet(peer.block)
			case peerPods:
				for _, pod := range c.selectedPods(p, peer) {
					addrs = append(addrs, pod.ips[network]...)
				}
			case peerInvalid:
			}
		}
		rr.blocks.normalize()
		rr.podAddrs = countAddrs(addrs)
		rr.rebuildPeers()
	}
	if len(r.namedPorts) > 0 && (r.anyPeer || !rr.peers.empty()) {
		rr.namedDests = c.egressNamedDests(p, r, &rr.peers, network)
	}
	if p.cache.rules == nil {
		p.cache.rules = map[ruleOnNetwork]*resolvedRule{}
	}
	p.cache.rules[k] = rr
	return rr
}

// countAddrs sorts addresses and counts duplicates.
func countAddrs(addrs []netip.Addr) []addrCount {
	slices.SortFunc(addrs, netip.Addr.Compare)
	out := make([]addrCount, 0, len(addrs))
	for _, a := range addrs {
		if n := len(out); n > 0 && out[n-1].addr == a {
			out[n-1].n++
			continue
		}
		out = append(out, addrCount{addr: a, n: 1})
	}
	return out
}

// adjust adds delta selections of addr and reports whether the set of
// addresses changed.
func (rr *resolvedRule) adjust(addr netip.Addr, delta int) bool {
	i, found := slices.BinarySearchFunc(rr.podAddrs, addr, func(ac addrCount, a netip.Addr) int { return ac.addr.Compare(a) })
	switch {
	case found:
		rr.podAddrs[i].n += delta
		if rr.podAddrs[i].n > 0 {
			return false
		}
		rr.podAddrs = slices.Delete(rr.podAddrs, i, i+1)
		return true
	case delta > 0:
		rr.podAddrs = slices.Insert(rr.podAddrs, i, addrCount{addr: addr, n: delta})
		return true
	}
	return false
}

// rebuildPeers recomputes peers from blocks and podAddrs, both sorted, in
// linear time. The ranges buffer is reused (only computations, which hold
// the engine lock, read it); the prefixes are not, as rule sets already
// handed out may share them.
func (rr *resolvedRule) rebuildPeers() {
	ranges := slices.Grow(rr.peers.ranges[:0], len(rr.blocks.ranges)+len(rr.podAddrs))
	bs, ps := rr.blocks.ranges, rr.podAddrs
	for len(bs) > 0 || len(ps) > 0 {
		if len(ps) == 0 || (len(bs) > 0 && bs[0].first.Compare(ps[0].addr) <= 0) {
			ranges = append(ranges, bs[0])
			bs = bs[1:]
			continue
		}
		ranges = append(ranges, addrRange{first: ps[0].addr, last: ps[0].addr})
		ps = ps[1:]
	}
	rr.peers = prefixSet{ranges: ranges}
	rr.peers.coalesce()
}

// egressNamedDests resolves egress named ports against each destination
// pod: the known pods of the network that are peers of the rule (selected,
// or with an address inside one of its ipBlocks, or any pod when the rule
// has no peers) and expose the port. Destinations that are not known pods
// never match a named port.
func (c *computation) egressNamedDests(p *policyInfo, r *ruleInfo, peers *prefixSet, network NetworkRef) map[PortMatch]*prefixSet {
	byPort := map[PortMatch]*prefixSet{}
	add := func(pod *podInfo) {
		for _, addr := range pod.ips[network] {
			if !r.anyPeer && !peers.contains(addr) {
				continue
			}
			for _, np := range r.namedPorts {
				for _, pm := range pod.resolve(np) {
					if byPort[pm] == nil {
						byPort[pm] = &prefixSet{}
					}
					byPort[pm].addAddr(addr)
				}
			}
		}
	}
	// Only ipBlock peers (or no peers) need every pod of the cluster; pod
	// peers name their candidates.
	scanAll := r.anyPeer || slices.ContainsFunc(r.peers, func(p peerInfo) bool { return p.kind == peerIPBlock })
	if scanAll {
		for _, pod := range c.s.pods {
			if pod.peerable {
				add(pod)
			}
		}
	} else {
		seen := map[*podInfo]bool{}
		for i := range r.peers {
			if r.peers[i].kind != peerPods {
				continue
			}
			for _, pod := range c.selectedPods(p, &r.peers[i]) {
				if !seen[pod] {
					seen[pod] = true
					add(pod)
				}
			}
		}
	}
	for _, set := range byPort {
		set.normalize()
	}
	return byPort
}

func comparePortMatch(a, b PortMatch) int {
	if c := cmp.Compare(a.Protocol, b.Protocol); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Port, b.Port); c != 0 {
		return c
	}
	return cmp.Compare(a.EndPort, b.EndPort)
}

// selectedPods returns the peerable pods a pod peer of policy p selects.
func (c *computation) selectedPods(p *policyInfo, peer *peerInfo) []*podInfo {
	if pods, ok := p.cache.peerPods[peer]; ok {
		return pods
	}
	var pods []*podInfo
	match := func(ns string) {
		for _, pod := range c.s.podsNS[ns] {
			if pod.peerable && (peer.podSelector == nil || peer.podSelector.Matches(pod.labels)) {
				pods = append(pods, pod)
			}
		}
	}
	if peer.nsSelector == nil {
		match(peer.policyNamespace)
	} else {
		for ns, l := range c.s.namespaces {
			if peer.nsSelector.Matches(l) {
				match(ns)
			}
		}
	}
	if p.cache.peerPods == nil {
		p.cache.peerPods = map[*peerInfo][]*podInfo{}
	}
	p.cache.peerPods[peer] = pods
	return pods
}

// resolve returns the numeric port(s) a named port has on this pod.
func (p *podInfo) resolve(np namedPort) []PortMatch {
	var out []PortMatch
	for _, cp := range p.ports {
		if cp.name == np.name && cp.protocol == np.protocol {
			out = append(out, PortMatch{Protocol: np.protocol, Port: cp.port, EndPort: cp.port})
		}
	}
	return out
}

// ruleBuilder merges rules that allow the same ports, so the rule list is
// canonical: one rule per distinct port list, peers unioned. Peer sets are
// shared with the policies' resolution caches and never modified here.
type ruleBuilder struct {
	byPorts map[string]*pendingRule
}

type pendingRule struct {
	anyPeer bool
	peers   []*prefixSet
	ports   []PortMatch
	origins []string
}

func newRuleBuilder() *ruleBuilder { return &ruleBuilder{byPorts: map[string]*pendingRule{}} }

func (b *ruleBuilder) add(anyPeer bool, peers *prefixSet, ports []PortMatch, origin string) {
	ports = canonicalPorts(ports)
	k := portsKey(ports)
	pr := b.byPorts[k]
	if pr == nil {
		pr = &pendingRule{ports: ports}
		b.byPorts[k] = pr
	}
	pr.anyPeer = pr.anyPeer || anyPeer
	if !anyPeer && !slices.Contains(pr.peers, peers) {
		pr.peers = append(pr.peers, peers)
	}
	if !slices.Contains(pr.origins, origin) {
		pr.origins = append(pr.origins, origin)
	}
}

func (b *ruleBuilder) rules() []Rule {
	out := make([]Rule, 0, len(b.byPorts))
	for _, pr := range b.byPorts {
		r := Rule{AnyPeer: pr.anyPeer, Ports: pr.ports, Origins: pr.origins}
		switch {
		case pr.anyPeer:
		case len(pr.peers) == 1:
			r.Peers = pr.peers[0].cachedPrefixes() // shared: rule sets are read-only
		default:
			var union prefixSet
			for _, p := range pr.peers {
				union.addSet(p)
			}
			union.normalize()
			r.Peers = union.prefixes()
		}
		slices.Sort(r.Origins)
		out = append(out, r)
	}
	// Stable order: all-ports rules first, then by port list.
	slices.SortFunc(out, func(a, b Rule) int { return cmp.Compare(portsKey(a.Ports), portsKey(b.Ports)) })
	return out
}

// canonicalPorts sorts and merges port matches: per protocol, overlapping
// or adjacent ranges are merged and an all-ports match absorbs the rest.
func canonicalPorts(ports []PortMatch) []PortMatch {
	if len(ports) == 0 {
		return nil
	}
	ps := slices.Clone(ports)
	slices.SortFunc(ps, comparePortMatch)
	out := ps[:0]
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].Protocol == p.Protocol {
			last := &out[n-1]
			if last.AllPorts() {
				continue
			}
			if p.AllPorts() {
				*last = p
				continue
			}
			if uint32(p.Port) <= uint32(last.EndPort)+1 {
				last.EndPort = max(last.EndPort, p.EndPort)
				continue
			}
		}
		out = append(out, p)
	}
	return out
}

func portsKey(ports []PortMatch) string {
	parts := make([]string, len(ports))
	for i, p := range ports {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}
