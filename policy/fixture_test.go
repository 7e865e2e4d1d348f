package policy_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	mnp "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy/policytest"
)

// The fixture every semantic test starts from:
//
//	ns1 (team=a): NADs sriov-a (accelerated-bridge), macvlan (macvlan)
//	ns2 (team=b): NAD sriov-b (accelerated-bridge)
//	ns1/web     app=web   sriov-a 10.1.0.10 fd00:1::10, macvlan 10.3.0.10, ns2/sriov-b 10.2.0.10
//	            ports http=8080/TCP dns=53/UDP sig=9999/SCTP
//	ns1/db      app=db    sriov-a 10.1.0.11 fd00:1::11        ports http=80/TCP
//	ns1/pending app=db    sriov-a 10.1.0.12 (Pending)
//	ns1/hostnet app=db    sriov-a 10.1.0.13 (hostNetwork)
//	ns1/noip    app=db    sriov-a, no address reported
//	ns2/client  app=client sriov-a 10.1.0.20 fd00:1::20       ports http=8081/TCP
//	ns2/other   app=db    sriov-a 10.1.0.21
//	ns2/static  app=static sriov-a, static ips 10.1.0.30/24 (no network-status)
var (
	sriovA  = policy.NetworkRef{Namespace: "ns1", Name: "sriov-a"}
	sriovB  = policy.NetworkRef{Namespace: "ns2", Name: "sriov-b"}
	macvlan = policy.NetworkRef{Namespace: "ns1", Name: "macvlan"}
)

func fixture() *policy.Objects {
	objs := &policy.Objects{
		Namespaces: []*corev1.Namespace{
			{ObjectMeta: metav1.ObjectMeta{Name: "ns1", Labels: map[string]string{"team": "a"}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "ns2", Labels: map[string]string{"team": "b"}}},
		},
		NADs: []*nadv1.NetworkAttachmentDefinition{
			policytest.NAD(sriovA, "accelerated-bridge"),
			policytest.NAD(macvlan, "macvlan"),
			policytest.NAD(sriovB, "accelerated-bridge"),
		},
	}
	web := pod("ns1", "web", "app=web", status(sriovA, "10.1.0.10", "fd00:1::10"), status(macvlan, "10.3.0.10"), status(sriovB, "10.2.0.10"))
	withPorts(web, "http", "TCP", 8080, "dns", "UDP", 53, "sig", "SCTP", 9999)
	db := withPorts(pod("ns1", "db", "app=db", status(sriovA, "10.1.0.11", "fd00:1::11")), "http", "TCP", 80)
	pending := pod("ns1", "pending", "app=db", status(sriovA, "10.1.0.12"))
	pending.Status.Phase = corev1.PodPending
	hostnet := pod("ns1", "hostnet", "app=db", status(sriovA, "10.1.0.13"))
	hostnet.Spec.HostNetwork = true
	noip := pod("ns1", "noip", "app=db", status(sriovA))
	client := withPorts(pod("ns2", "client", "app=client", status(sriovA, "10.1.0.20", "fd00:1::20")), "http", "TCP", 8081)
	other := pod("ns2", "other", "app=db", status(sriovA, "10.1.0.21"))
	static := pod("ns2", "static", "app=static")
	static.Annotations[nadv1.NetworkAttachmentAnnot] = `[{"name":"sriov-a","namespace":"ns1","ips":["10.1.0.30/24"]}]`
	objs.Pods = []*corev1.Pod{web, db, pending, hostnet, noip, client, other, static}
	return objs
}

type netStatus struct {
	net policy.NetworkRef
	ips []string
}

func status(n policy.NetworkRef, ips ...string) netStatus { return netStatus{n, ips} }

func pod(ns, name, lbls string, nets ...netStatus) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: parseLabels(lbls), Annotations: map[string]string{}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	var sel []string
	statuses := []nadv1.NetworkStatus{{Name: "cbr0", Default: true, IPs: []string{"192.168.1.1"}}}
	for i, n := range nets {
		sel = append(sel, n.net.String())
		statuses = append(statuses, nadv1.NetworkStatus{Name: n.net.String(), Interface: "net" + string(rune('1'+i)), IPs: n.ips})
	}
	if len(nets) > 0 {
		p.Annotations[nadv1.NetworkAttachmentAnnot] = strings.Join(sel, ",")
		b, _ := json.Marshal(statuses)
		p.Annotations[nadv1.NetworkStatusAnnot] = string(b)
	}
	return p
}

// withPorts adds named container ports: name, protocol, number triples.
func withPorts(p *corev1.Pod, triples ...any) *corev1.Pod {
	for i := 0; i < len(triples); i += 3 {
		p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{
			Name: triples[i].(string), Protocol: corev1.Protocol(triples[i+1].(string)), ContainerPort: int32(triples[i+2].(int)),
		})
	}
	return p
}

func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for kv := range strings.SplitSeq(s, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

// netpol builds a MultiNetworkPolicy; policyFor "-" leaves the annotation out.
func netpol(ns, name, policyFor string, spec mnp.MultiNetworkPolicySpec) *mnp.MultiNetworkPolicy {
	p := &mnp.MultiNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{}}, Spec: spec}
	if policyFor != "-" {
		p.Annotations[policy.PolicyForAnnotation] = policyFor
	}
	return p
}

func sel(lbls string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: parseLabels(lbls)}
}

func selExpr(key string, op metav1.LabelSelectorOperator, values ...string) metav1.LabelSelector {
	return metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

func ipBlock(cidr string, except ...string) mnp.MultiNetworkPolicyPeer {
	return mnp.MultiNetworkPolicyPeer{IPBlock: &mnp.IPBlock{CIDR: cidr, Except: except}}
}

func podPeer(lbls string) mnp.MultiNetworkPolicyPeer {
	return mnp.MultiNetworkPolicyPeer{PodSelector: sel(lbls)}
}

func nsPeer(lbls string) mnp.MultiNetworkPolicyPeer {
	return mnp.MultiNetworkPolicyPeer{NamespaceSelector: sel(lbls)}
}

// port builds a policy port: proto "" means unset (TCP); port is an int, a
// string (named) or nil; endPort 0 means unset.
func port(proto string, p any, endPort int32) mnp.MultiNetworkPolicyPort {
	var out mnp.MultiNetworkPolicyPort
	if proto != "" {
		pr := corev1.Protocol(proto)
		out.Protocol = &pr
	}
	switch v := p.(type) {
	case int:
		x := intstr.FromInt32(int32(v))
		out.Port = &x
	case string:
		x := intstr.FromString(v)
		out.Port = &x
	}
	if endPort != 0 {
		out.EndPort = &endPort
	}
	return out
}

func ingress(peers []mnp.MultiNetworkPolicyPeer, ports ...mnp.MultiNetworkPolicyPort) mnp.MultiNetworkPolicyIngressRule {
	return mnp.MultiNetworkPolicyIngressRule{From: peers, Ports: ports}
}

func egress(peers []mnp.MultiNetworkPolicyPeer, ports ...mnp.MultiNetworkPolicyPort) mnp.MultiNetworkPolicyEgressRule {
	return mnp.MultiNetworkPolicyEgressRule{To: peers, Ports: ports}
}

func peers(p ...mnp.MultiNetworkPolicyPeer) []mnp.MultiNetworkPolicyPeer { return p }

// expect is one packet and its verdict, written "in 10.1.0.11 tcp 80" or
// "out fd00:1::20 udp 53" (in: to the pod, from the address; out: from the
// pod, to the address).
type expect struct {
	packet  string
	allowed bool
}

func allow(pkt string) expect { return expect{pkt, true} }
func deny(pkt string) expect  { return expect{pkt, false} }

func parsePacket(t *testing.T, s string) policy.Packet {
	t.Helper()
	f := strings.Fields(s)
	if len(f) < 3 {
		t.Fatalf("bad packet %q", s)
	}
	pkt := policy.Packet{Remote: netip.MustParseAddr(f[1])}
	if f[0] == "out" {
		pkt.Direction = policy.Egress
	}
	pkt.Protocol, _ = policy.ParseProtocol(f[2])
	if len(f) > 3 {
		var n int
		for _, c := range f[3] {
			n = n*10 + int(c-'0')
		}
		pkt.Port = uint16(n)
	}
	return pkt
}

// verify computes the attachment's rule set with the engine and checks each
// expected verdict against both the rule set and the reference evaluator.
func verify(t *testing.T, objs *policy.Objects, opts policy.Options, att policy.Attachment, expects ...expect) *policy.RuleSet {
	t.Helper()
	rs, _ := verifyErr(t, objs, opts, att, expects...)
	return rs
}

// verifyErr is verify that also returns the engine's error.
func verifyErr(t *testing.T, objs *policy.Objects, opts policy.Options, att policy.Attachment, expects ...expect) (*policy.RuleSet, error) {
	t.Helper()
	s := &policytest.Scenario{Objects: *objs, Options: opts}
	for _, p := range objs.Pods {
		atts, err := policy.PodAttachments(p)
		if err != nil {
			continue
		}
		s.Attachments = append(s.Attachments, atts...)
	}
	e := s.Engine()
	rs, err := e.Compute(att)
	if rs == nil {
		t.Fatalf("%s: no rule set: %v", att, err)
	}
	for _, x := range expects {
		pkt := parsePacket(t, x.packet)
		if got := rs.Allows(pkt); got != x.allowed {
			t.Errorf("%s: %q: rule set allows=%v, want %v\n%s", att, x.packet, got, x.allowed, dumpJSON(rs))
		}
		if got := policy.Evaluate(objs, opts, att, pkt); got != x.allowed {
			t.Errorf("%s: %q: reference evaluator allows=%v, want %v", att, x.packet, got, x.allowed)
		}
	}
	return rs, err
}

func att(podNS, podName string, n policy.NetworkRef) policy.Attachment {
	return policy.Attachment{PodNamespace: podNS, PodName: podName, Network: n}
}

// inputErrors returns the *policy.InputError values joined in err.
func inputErrors(err error) []*policy.InputError {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		var out []*policy.InputError
		for _, e := range joined.Unwrap() {
			out = append(out, inputErrors(e)...)
		}
		return out
	}
	var ie *policy.InputError
	if errors.As(err, &ie) {
		return []*policy.InputError{ie}
	}
	return nil
}
