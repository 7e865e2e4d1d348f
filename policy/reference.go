package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Objects is a snapshot of the cluster objects the policy core reads.
type Objects struct {
	Policies   []*mnpv1beta1.MultiNetworkPolicy
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
	NADs       []*nadv1.NetworkAttachmentDefinition
}

// Evaluate is the reference evaluator: it decides whether the first packet
// of a new connection is allowed for an attachment, reading the API objects
// directly, one packet at a time, without the engine's parsing, indexes,
// prefix arithmetic or rule merging. It exists to be obviously correct and
// is used by tests as the oracle for the engine, the TC compiler and real
// traffic. It is deliberately slow.
//
// It implements the same fail-closed choices as the engine: an invalid
// podSelector selects every pod of the namespace and allows nothing; an
// invalid peer or port matches nothing; an unknown policy type isolates
// both directions.
func Evaluate(objs *Objects, opts Options, att Attachment, pkt Packet) bool {
	plugins := opts.NetworkPlugins
	if len(plugins) == 0 {
		plugins = DefaultNetworkPlugins
	}
	pod := refFindPod(objs, att.PodNamespace, att.PodName)
	if pod == nil || !refEnforced(objs, att.Network, plugins) {
		return true
	}
	isolated := false
	for _, p := range objs.Policies {
		if p.Namespace != pod.Namespace || !refPolicyFor(p, att.Network) {
			continue
		}
		sel, selErr := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		if selErr == nil && !sel.Matches(labels.Set(pod.Labels)) {
			continue
		}
		if !refPolicyIsolates(p, pkt.Direction) {
			continue
		}
		isolated = true
		if selErr != nil {
			continue // fail closed: isolate, allow nothing
		}
		if refPolicyAllows(objs, p, pod, att.Network, pkt) {
			return true
		}
	}
	if !isolated {
		return true
	}
	switch pkt.Protocol {
	case ICMP:
		return opts.AcceptICMP
	case ICMPv6:
		return opts.AcceptICMPv6
	}
	return false
}

func refFindPod(objs *Objects, ns, name string) *corev1.Pod {
	for _, p := range objs.Pods {
		if p.Namespace == ns && p.Name == name {
			return p
		}
	}
	return nil
}

func refEnforced(objs *Objects, n NetworkRef, plugins []string) bool {
	for _, nad := range objs.NADs {
		if nad.Namespace == n.Namespace && nad.Name == n.Name {
			t, err := nadPluginType(nad)
			return err == nil && slices.Contains(plugins, t)
		}
	}
	return false
}

func refPolicyFor(p *mnpv1beta1.MultiNetworkPolicy, n NetworkRef) bool {
	for _, item := range strings.Split(p.Annotations[PolicyForAnnotation], ",") {
		item = strings.ReplaceAll(strings.ReplaceAll(item, " ", ""), "\t", "")
		ns, name, found := strings.Cut(item, "/")
		if !found {
			ns, name = p.Namespace, item
		}
		if ns == n.Namespace && name == n.Name {
			return true
		}
	}
	return false
}

func refPolicyIsolates(p *mnpv1beta1.MultiNetworkPolicy, d Direction) bool {
	types := p.Spec.PolicyTypes
	if len(types) == 0 {
		return d == Ingress || len(p.Spec.Egress) > 0
	}
	for _, t := range types {
		if t != mnpv1beta1.PolicyTypeIngress && t != mnpv1beta1.PolicyTypeEgress {
			return true
		}
		if (t == mnpv1beta1.PolicyTypeIngress) == (d == Ingress) {
			return true
		}
	}
	return false
}

func refPolicyAllows(objs *Objects, p *mnpv1beta1.MultiNetworkPolicy, pod *corev1.Pod, network NetworkRef, pkt Packet) bool {
	if pkt.Direction == Ingress {
		for _, r := range p.Spec.Ingress {
			if refRuleAllows(objs, p, pod, network, r.From, r.Ports, pkt) {
				return true
			}
		}
		return false
	}
	for _, r := range p.Spec.Egress {
		if refRuleAllows(objs, p, pod, network, r.To, r.Ports, pkt) {
			return true
		}
	}
	return false
}

func refRuleAllows(objs *Objects, p *mnpv1beta1.MultiNetworkPolicy, pod *corev1.Pod, network NetworkRef,
	peers []mnpv1beta1.MultiNetworkPolicyPeer, ports []mnpv1beta1.MultiNetworkPolicyPort, pkt Packet) bool {
	peerOK := len(peers) == 0
	for i := range peers {
		if refPeerMatches(objs, p.Namespace, &peers[i], network, pkt.Remote) {
			peerOK = true
			break
		}
	}
	if !peerOK {
		return false
	}
	if len(ports) == 0 {
		return true
	}
	for _, port := range ports {
		if refPortMatches(objs, pod, network, port, pkt) {
			return true
		}
	}
	return false
}

func refPeerMatches(objs *Objects, policyNS string, peer *mnpv1beta1.MultiNetworkPolicyPeer, network NetworkRef, addr netip.Addr) bool {
	if peer.IPBlock != nil {
		if peer.PodSelector != nil || peer.NamespaceSelector != nil {
			return false
		}
		return refInIPBlock(peer.IPBlock, addr)
	}
	if peer.PodSelector == nil && peer.NamespaceSelector == nil {
		return false
	}
	var podSel, nsSel labels.Selector = labels.Everything(), nil
	if peer.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		if err != nil {
			return false
		}
		podSel = s
	}
	if peer.NamespaceSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil {
			return false
		}
		nsSel = s
	}
	for _, q := range objs.Pods {
		if !refPeerable(q) || !podSel.Matches(labels.Set(q.Labels)) {
			continue
		}
		if nsSel == nil && q.Namespace != policyNS {
			continue
		}
		if nsSel != nil && !refNamespaceMatches(objs, q.Namespace, nsSel) {
			continue
		}
		if slices.Contains(refPodIPs(q, network), addr) {
			return true
		}
	}
	return false
}

func refInIPBlock(b *mnpv1beta1.IPBlock, addr netip.Addr) bool {
	cidr, err := netip.ParsePrefix(strings.TrimSpace(b.CIDR))
	if err != nil {
		return false
	}
	for _, e := range b.Except {
		ex, err := netip.ParsePrefix(strings.TrimSpace(e))
		if err != nil || ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() < cidr.Bits() || !cidr.Masked().Contains(ex.Addr()) {
			return false // the whole peer is invalid
		}
	}
	if !cidr.Masked().Contains(addr) {
		return false
	}
	for _, e := range b.Except {
		if netip.MustParsePrefix(strings.TrimSpace(e)).Masked().Contains(addr) {
			return false
		}
	}
	return true
}

func refNamespaceMatches(objs *Objects, ns string, sel labels.Selector) bool {
	for _, n := range objs.Namespaces {
		if n.Name == ns {
			return sel.Matches(labels.Set(n.Labels))
		}
	}
	return false
}

func refPeerable(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodRunning && !p.Spec.HostNetwork
}

// refPodIPs reads the pod's addresses on network: network-status first, the
// static ips of the selection element when network-status does not list
// the network.
func refPodIPs(p *corev1.Pod, network NetworkRef) []netip.Addr {
	info := newPodInfo(p)
	return info.ips[network]
}

func refPortMatches(objs *Objects, pod *corev1.Pod, network NetworkRef, port mnpv1beta1.MultiNetworkPolicyPort, pkt Packet) bool {
	proto := TCP
	if port.Protocol != nil {
		proto = Protocol(*port.Protocol)
	}
	if proto != TCP && proto != UDP && proto != SCTP {
		return false
	}
	if pkt.Protocol != proto {
		return false
	}
	if port.Port == nil {
		return port.EndPort == nil
	}
	if port.Port.Type == intstr.String {
		if port.EndPort != nil {
			return false
		}
		// The destination pod: the local pod for ingress, the peer pod
		// owning the remote address for egress.
		if pkt.Direction == Ingress {
			return refPodExposes(pod, port.Port.StrVal, proto, pkt.Port)
		}
		for _, q := range objs.Pods {
			if refPeerable(q) && slices.Contains(refPodIPs(q, network), pkt.Remote) &&
				refPodExposes(q, port.Port.StrVal, proto, pkt.Port) {
				return true
			}
		}
		return false
	}
	lo := port.Port.IntVal
	hi := lo
	if port.EndPort != nil {
		hi = *port.EndPort
	}
	if lo < 1 || hi < lo || hi > 65535 {
		return false
	}
	return int32(pkt.Port) >= lo && int32(pkt.Port) <= hi
}

func refPodExposes(p *corev1.Pod, name string, proto Protocol, port uint16) bool {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			cpProto := Protocol(cp.Protocol)
			if cpProto == "" {
				cpProto = TCP
			}
			if cp.Name == name && cpProto == proto && cp.ContainerPort == int32(port) {
				return true
			}
		}
	}
	return false
}

// AllowedBy names, the way the reference evaluator reads the API objects,
// every policy rule that allows pkt for att, down to the peer and port
// that match: "ns/name ingress[i] from[j] ports[k]" (from[j] is left out
// when the rule has no peers, ports[k] when it has no ports). It is empty
// when no rule allows the packet (it may still pass: not isolated, not
// enforced, or an accept-ICMP flag). explain prints it beside the
// engine's answer.
func AllowedBy(objs *Objects, opts Options, att Attachment, pkt Packet) []string {
	pod := refFindPod(objs, att.PodNamespace, att.PodName)
	if pod == nil {
		return nil
	}
	var out []string
	for _, p := range objs.Policies {
		if p.Namespace != pod.Namespace || !refPolicyFor(p, att.Network) || !refPolicyIsolates(p, pkt.Direction) {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		if err != nil || !sel.Matches(labels.Set(pod.Labels)) {
			continue
		}
		type rule struct {
			peers []mnpv1beta1.MultiNetworkPolicyPeer
			ports []mnpv1beta1.MultiNetworkPolicyPort
		}
		dir, peerWord := "ingress", "from"
		var rules []rule
		if pkt.Direction == Ingress {
			for _, r := range p.Spec.Ingress {
				rules = append(rules, rule{r.From, r.Ports})
			}
		} else {
			dir, peerWord = "egress", "to"
			for _, r := range p.Spec.Egress {
				rules = append(rules, rule{r.To, r.Ports})
			}
		}
		for i, r := range rules {
			peers, ports := r.peers, r.ports
			var peerIdx []string
			if len(peers) == 0 {
				peerIdx = []string{""}
			}
			for j := range peers {
				if refPeerMatches(objs, p.Namespace, &peers[j], att.Network, pkt.Remote) {
					peerIdx = append(peerIdx, fmt.Sprintf(" %s[%d]", peerWord, j))
				}
			}
			var portIdx []string
			if len(ports) == 0 {
				portIdx = []string{""}
			}
			for k, port := range ports {
				if refPortMatches(objs, pod, att.Network, port, pkt) {
					portIdx = append(portIdx, fmt.Sprintf(" ports[%d]", k))
				}
			}
			for _, pi := range peerIdx {
				for _, ki := range portIdx {
					out = append(out, fmt.Sprintf("%s/%s %s[%d]%s%s", p.Namespace, p.Name, dir, i, pi, ki))
				}
			}
		}
	}
	return out
}
