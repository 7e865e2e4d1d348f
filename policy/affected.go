package policy

import (
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
)

// The affected* functions answer "which local attachments may compute a
// different rule set after this change?" so the agent recomputes only
// those. They may over-approximate, never under-approximate. The caller
// holds the write lock and passes the object's state before and after the
// change (nil when absent).

func (e *Engine) affectedByPolicy(old, cur *policyInfo) []Attachment {
	set := map[string]bool{}
	for _, p := range []*policyInfo{old, cur} {
		if p != nil {
			e.addSelectedBy(set, p)
		}
	}
	return e.attachmentsOf(set)
}

// addSelectedBy adds the local attachments a policy applies to.
func (e *Engine) addSelectedBy(set map[string]bool, p *policyInfo) {
	for _, a := range e.state.attachments {
		if a.PodNamespace != p.namespace || !p.networks[a.Network] {
			continue
		}
		if pod := e.state.pods[key(a.PodNamespace, a.PodName)]; pod == nil || p.selects(pod) {
			set[a.ID()] = true
		}
	}
}

func (e *Engine) affectedByPod(old, cur *podInfo) []Attachment {
	if old.fingerprint() == cur.fingerprint() {
		return nil
	}
	set := map[string]bool{}
	// The pod's own attachments: selection and named ingress ports.
	for _, p := range []*podInfo{old, cur} {
		if p != nil {
			for _, id := range e.state.attByPod[key(p.namespace, p.name)] {
				set[id] = true
			}
		}
	}
	// Attachments whose peers include the pod, before or after: only
	// policies of the pod's namespace, or that look across namespaces, can.
	ns := cur
	if ns == nil {
		ns = old
	}
	visit := func(pol *policyInfo) {
		if e.policyReferencesPod(pol, old) || e.policyReferencesPod(pol, cur) {
			e.podChanged(pol, old, cur)
			e.addSelectedBy(set, pol)
		}
	}
	for _, pol := range e.state.policiesNS[ns.namespace] {
		visit(pol)
	}
	for _, pol := range e.state.crossNS {
		if pol.namespace != ns.namespace {
			visit(pol)
		}
	}
	return e.attachmentsOf(set)
}

// policyReferencesPod reports whether pod may be a peer of one of the
// policy's rules on one of its networks.
func (e *Engine) policyReferencesPod(pol *policyInfo, pod *podInfo) bool {
	if pod == nil || !pod.peerable || !onAnyNetwork(pod, pol.networks) {
		return false
	}
	for d := range pol.rules {
		for i := range pol.rules[d] {
			r := &pol.rules[d][i]
			if len(r.namedPorts) > 0 && d == int(Egress) && namedPortCandidate(r, pod) {
				return true
			}
			for j := range r.peers {
				if e.peerSelectsPod(&r.peers[j], pod) {
					return true
				}
			}
		}
	}
	return false
}

// namedPortCandidate: egress named ports resolve against every known pod
// the rule's peers cover by address (no peers, or an ipBlock), so such a pod
// matters even though no selector names it.
func namedPortCandidate(r *ruleInfo, pod *podInfo) bool {
	if r.anyPeer {
		return true
	}
	for _, peer := range r.peers {
		if peer.kind != peerIPBlock {
			continue
		}
		for _, addrs := range pod.ips {
			for _, a := range addrs {
				if peer.block.contains(a) {
					return true
				}
			}
		}
	}
	return false
}

func onAnyNetwork(pod *podInfo, networks map[NetworkRef]bool) bool {
	for n := range networks {
		if len(pod.ips[n]) > 0 {
			return true
		}
	}
	return false
}

func (e *Engine) peerSelectsPod(peer *peerInfo, pod *podInfo) bool {
	if peer.kind != peerPods {
		return false
	}
	if peer.podSelector != nil && !peer.podSelector.Matches(pod.labels) {
		return false
	}
	if peer.nsSelector == nil {
		return pod.namespace == peer.policyNamespace
	}
	l, known := e.state.namespaces[pod.namespace]
	return known && peer.nsSelector.Matches(l)
}

// podChanged updates a policy's cache for a pod that changed from old to cur
// (either may be nil) instead of dropping it: selecting again over the
// cluster and rebuilding every address set is what makes a pod change
// expensive. The selected-pod lists are patched, then each resolved rule's
// address counts: minus old's addresses once per peer that selected old,
// plus cur's once per peer that selects cur.
func (e *Engine) podChanged(pol *policyInfo, old, cur *podInfo) {
	type membership struct{ was, is bool }
	members := make(map[*peerInfo]membership, len(pol.cache.peerPods))
	for peer, pods := range pol.cache.peerPods {
		var m membership
		if old != nil {
			n := len(pods)
			pods = slices.DeleteFunc(pods, func(p *podInfo) bool { return p == old })
			m.was = len(pods) < n
		}
		if cur != nil && cur.peerable && e.peerSelectsPod(peer, cur) {
			pods = append(pods, cur)
			m.is = true
		}
		pol.cache.peerPods[peer] = pods
		members[peer] = m
	}
	for k, rr := range pol.cache.rules {
		r := k.rule
		if len(r.namedPorts) > 0 {
			delete(pol.cache.rules, k) // named ports: resolve again
			continue
		}
		var was, is int
		for j := range r.peers {
			m := members[&r.peers[j]]
			if m.was {
				was++
			}
			if m.is {
				is++
			}
		}
		changed := false
		if was > 0 {
			for _, a := range old.ips[k.network] {
				changed = rr.adjust(a, -was) || changed
			}
		}
		if is > 0 {
			for _, a := range cur.ips[k.network] {
				changed = rr.adjust(a, is) || changed
			}
		}
		if changed {
			rr.rebuildPeers()
		}
	}
}

func (e *Engine) affectedByNamespace(old, cur labels.Set) []Attachment {
	if labels.Equals(old, cur) && old != nil && cur != nil {
		return nil
	}
	set := map[string]bool{}
	for _, pol := range e.state.policies {
		if policySelectsNamespace(pol, old) || policySelectsNamespace(pol, cur) {
			pol.cache = resolutionCache{}
			e.addSelectedBy(set, pol)
		}
	}
	return e.attachmentsOf(set)
}

func policySelectsNamespace(pol *policyInfo, l labels.Set) bool {
	if l == nil {
		return false
	}
	for d := range pol.rules {
		for i := range pol.rules[d] {
			for _, peer := range pol.rules[d][i].peers {
				if peer.kind == peerPods && peer.nsSelector != nil && peer.nsSelector.Matches(l) {
					return true
				}
			}
		}
	}
	return false
}

func (e *Engine) affectedByNetwork(n NetworkRef) []Attachment {
	set := map[string]bool{}
	for id, a := range e.state.attachments {
		if a.Network == n {
			set[id] = true
		}
	}
	return e.attachmentsOf(set)
}

func (e *Engine) attachmentsOf(set map[string]bool) []Attachment {
	out := make([]Attachment, 0, len(set))
	for id := range set {
		out = append(out, e.state.attachments[id])
	}
	slices.SortFunc(out, func(a, b Attachment) int { return strings.Compare(a.ID(), b.ID()) })
	return out
}
