package policy_test

import (
	"slices"
	"strings"
	"testing"

	mnp "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// Each numbered semantic of the policy core has its own test below; the
// numbers refer to the policy-core issue and docs/policy-semantics.md.

var (
	ingressOnly = []mnp.MultiPolicyType{mnp.PolicyTypeIngress}
	egressOnly  = []mnp.MultiPolicyType{mnp.PolicyTypeEgress}
	bothTypes   = []mnp.MultiPolicyType{mnp.PolicyTypeIngress, mnp.PolicyTypeEgress}
	denyAll     = mnp.MultiNetworkPolicySpec{PolicyTypes: bothTypes}
)

// 1. Which attachments a policy applies to.
func TestSemantic1_PolicyApplies(t *testing.T) {
	webA := att("ns1", "web", sriovA)
	isolated := []expect{deny("in 10.1.0.11 tcp 80")}
	open := []expect{allow("in 10.1.0.11 tcp 80")}
	cases := []struct {
		name   string
		policy *mnp.MultiNetworkPolicy
		opts   policy.Options
		att    policy.Attachment
		want   []expect
	}{
		{"same namespace, empty podSelector", netpol("ns1", "p", "sriov-a", denyAll), policy.Options{}, webA, isolated},
		{"other namespace does not apply", netpol("ns2", "p", "ns1/sriov-a", denyAll), policy.Options{}, webA, open},
		{"matchLabels selects", netpol("ns1", "p", "sriov-a", mnp.MultiNetworkPolicySpec{PodSelector: *sel("app=web")}), policy.Options{}, webA, isolated},
		{"matchLabels does not select", netpol("ns1", "p", "sriov-a", mnp.MultiNetworkPolicySpec{PodSelector: *sel("app=db")}), policy.Options{}, webA, open},
		{"matchExpressions In", netpol("ns1", "p", "sriov-a", mnp.MultiNetworkPolicySpec{PodSelector: selExpr("app", metav1.LabelSelectorOpIn, "web", "x")}), policy.Options{}, webA, isolated},
		{"matchExpressions NotIn", netpol("ns1", "p", "sriov-a", mnp.MultiNetworkPolicySpec{PodSelector: selExpr("app", metav1.LabelSelectorOpNotIn, "web")}), policy.Options{}, webA, open},
		{"matchExpressions Exists", netpol("ns1", "p", "sriov-a", mnp.MultiNetworkPolicySpec{PodSelector: selExpr("app", metav1.LabelSelectorOpExists)}), policy.Options{}, webA, isolated},
		{"matchExpressions DoesNotExist", netpol("ns1", "p", "sriov-a", mnp.MultiNetworkPolicySpec{PodSelector: selExpr("app", metav1.LabelSelectorOpDoesNotExist)}), policy.Options{}, webA, open},
		{"matchLabels AND matchExpressions", netpol("ns1", "p", "sriov-a", mnp.MultiNetworkPolicySpec{PodSelector: metav1.LabelSelector{
			MatchLabels:      map[string]string{"app": "web"},
			MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpExists}},
		}}), policy.Options{}, webA, open},
		{"policy-for ns/name", netpol("ns1", "p", "ns1/sriov-a", denyAll), policy.Options{}, webA, isolated},
		{"policy-for list with spaces", netpol("ns1", "p", " ns2/sriov-b , sriov-a ", denyAll), policy.Options{}, webA, isolated},
		{"policy-for other network only", netpol("ns1", "p", "ns2/sriov-b", denyAll), policy.Options{}, webA, open},
		{"policy-for name resolves in the policy's namespace", netpol("ns2", "p", "sriov-a", denyAll), policy.Options{}, att("ns2", "client", sriovA), []expect{allow("in 10.1.0.11 tcp 80")}},
		{"policy-for another namespace's network", netpol("ns2", "p", "ns1/sriov-a", denyAll), policy.Options{}, att("ns2", "client", sriovA), []expect{deny("in 10.1.0.11 tcp 80")}},
		{"no policy-for annotation applies to nothing", netpol("ns1", "p", "-", denyAll), policy.Options{}, webA, open},
		{"network of a plugin not enforced", netpol("ns1", "p", "macvlan", denyAll), policy.Options{}, att("ns1", "web", macvlan), []expect{allow("in 10.3.0.11 tcp 80")}},
		{"--network-plugins enables another plugin", netpol("ns1", "p", "macvlan", denyAll), policy.Options{NetworkPlugins: []string{"accelerated-bridge", "macvlan"}}, att("ns1", "web", macvlan), []expect{deny("in 10.3.0.11 tcp 80")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			objs := fixture()
			objs.Policies = append(objs.Policies, c.policy)
			verify(t, objs, c.opts, c.att, c.want...)
		})
	}
}

// 2. policyTypes, and the default when they are not set.
func TestSemantic2_PolicyTypes(t *testing.T) {
	allowDB := peers(podPeer("app=db"))
	cases := []struct {
		name string
		spec mnp.MultiNetworkPolicySpec
		want []expect
	}{
		{"no policyTypes, no egress: ingress only", mnp.MultiNetworkPolicySpec{},
			[]expect{deny("in 10.1.0.20 tcp 80"), allow("out 10.1.0.20 tcp 80")}},
		{"no policyTypes, egress rules: both", mnp.MultiNetworkPolicySpec{Egress: []mnp.MultiNetworkPolicyEgressRule{egress(allowDB)}},
			[]expect{deny("in 10.1.0.20 tcp 80"), deny("out 10.1.0.20 tcp 80"), allow("out 10.1.0.11 tcp 80")}},
		{"Egress only", mnp.MultiNetworkPolicySpec{PolicyTypes: egressOnly},
			[]expect{allow("in 10.1.0.20 tcp 80"), deny("out 10.1.0.20 tcp 80")}},
		{"Ingress only never isolates egress, even with egress rules", mnp.MultiNetworkPolicySpec{PolicyTypes: ingressOnly,
			Egress: []mnp.MultiNetworkPolicyEgressRule{egress(allowDB)}},
			[]expect{deny("in 10.1.0.20 tcp 80"), allow("out 10.1.0.20 tcp 80")}},
		{"Egress only ignores ingress rules", mnp.MultiNetworkPolicySpec{PolicyTypes: egressOnly,
			Ingress: []mnp.MultiNetworkPolicyIngressRule{ingress(allowDB)}},
			[]expect{allow("in 10.1.0.20 tcp 80"), deny("out 10.1.0.11 tcp 80")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			objs := fixture()
			objs.Policies = append(objs.Policies, netpol("ns1", "p", "sriov-a", c.spec))
			verify(t, objs, policy.Options{}, att("ns1", "web", sriovA), c.want...)
		})
	}
}

// 3. Isolation is per direction; allowed traffic is the union of all rules of
// all policies selecting the attachment, whatever their order.
func TestSemantic3_UnionOfPolicies(t *testing.T) {
	p1 := netpol("ns1", "allow-db", "sriov-a", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{
		ingress(peers(podPeer("app=db")), port("TCP", 80, 0))}})
	p2 := netpol("ns1", "allow-client", "sriov-a", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{
		ingress(peers(ipBlock("10.1.0.20/32")), port("UDP", 53, 0))}})
	p3 := netpol("ns1", "deny-egress", "sriov-a", mnp.MultiNetworkPolicySpec{PolicyTypes: egressOnly})
	want := []expect{
		allow("in 10.1.0.11 tcp 80"), deny("in 10.1.0.11 udp 53"),
		allow("in 10.1.0.20 udp 53"), deny("in 10.1.0.20 tcp 80"),
		deny("out 10.1.0.11 tcp 80"),
	}
	var first string
	for _, order := range [][]*mnp.MultiNetworkPolicy{{p1, p2, p3}, {p3, p2, p1}, {p2, p3, p1}} {
		objs := fixture()
		objs.Policies = order
		rs := verify(t, objs, policy.Options{}, att("ns1", "web", sriovA), want...)
		if first == "" {
			first = dumpJSON(rs)
		} else if got := dumpJSON(rs); got != first {
			t.Errorf("rule set depends on policy order:\n%s\nvs\n%s", first, got)
		}
	}
}

// 4. Peers.
func TestSemantic4_Peers(t *testing.T) {
	cases := []struct {
		name  string
		peers []mnp.MultiNetworkPolicyPeer
		want  []expect
	}{
		{"ipBlock with except", peers(ipBlock("10.1.0.0/24", "10.1.0.16/28")),
			[]expect{allow("in 10.1.0.11 tcp 80"), deny("in 10.1.0.20 tcp 80"), deny("in 10.2.0.1 tcp 80")}},
		{"except is local to its peer, never a global deny", peers(ipBlock("10.1.0.0/24", "10.1.0.16/28"), podPeer("app=client")),
			[]expect{deny("in 10.1.0.20 tcp 80"), allow("in 10.1.0.11 tcp 80")}},
		{"except is local to its peer (second ipBlock)", peers(ipBlock("10.1.0.0/24", "10.1.0.16/28"), ipBlock("10.1.0.20/32")),
			[]expect{allow("in 10.1.0.20 tcp 80"), deny("in 10.1.0.21 tcp 80")}},
		{"podSelector selects in the policy's namespace", peers(podPeer("app=db")),
			[]expect{allow("in 10.1.0.11 tcp 80"), deny("in 10.1.0.21 tcp 80")}},
		{"namespaceSelector selects all pods of matching namespaces", peers(nsPeer("team=b")),
			[]expect{allow("in 10.1.0.20 tcp 80"), allow("in 10.1.0.21 tcp 80"), deny("in 10.1.0.11 tcp 80")}},
		{"podSelector AND namespaceSelector", peers(mnp.MultiNetworkPolicyPeer{PodSelector: sel("app=db"), NamespaceSelector: sel("team=b")}),
			[]expect{allow("in 10.1.0.21 tcp 80"), deny("in 10.1.0.20 tcp 80"), deny("in 10.1.0.11 tcp 80")}},
		{"empty podSelector: all pods of the namespace", peers(mnp.MultiNetworkPolicyPeer{PodSelector: &metav1.LabelSelector{}}),
			[]expect{allow("in 10.1.0.11 tcp 80"), deny("in 10.1.0.20 tcp 80")}},
		{"empty namespaceSelector: all pods of all namespaces", peers(mnp.MultiNetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{}}),
			[]expect{allow("in 10.1.0.11 tcp 80"), allow("in 10.1.0.20 tcp 80"), deny("in 10.1.0.99 tcp 80")}},
		{"pod peers resolve on the attachment's network only", peers(podPeer("app=web")),
			[]expect{deny("in 10.2.0.10 tcp 80"), deny("in 10.3.0.10 tcp 80")}},
		{"pending, hostNetwork and address-less pods contribute nothing", peers(podPeer("app=db")),
			[]expect{deny("in 10.1.0.12 tcp 80"), deny("in 10.1.0.13 tcp 80")}},
		{"selector matching no pod allows nothing, never any IP", peers(podPeer("app=nothing")),
			[]expect{deny("in 10.1.0.11 tcp 80"), deny("in 10.9.9.9 tcp 80")}},
		{"static ips of the selection element when network-status is absent", peers(mnp.MultiNetworkPolicyPeer{PodSelector: sel("app=static"), NamespaceSelector: &metav1.LabelSelector{}}),
			[]expect{allow("in 10.1.0.30 tcp 80"), deny("in 10.1.0.31 tcp 80")}},
		{"IPv6 addresses of pod peers", peers(podPeer("app=db")),
			[]expect{allow("in fd00:1::11 tcp 80"), deny("in fd00:1::20 tcp 80")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			objs := fixture()
			objs.Policies = append(objs.Policies, netpol("ns1", "p", "sriov-a", mnp.MultiNetworkPolicySpec{
				Ingress: []mnp.MultiNetworkPolicyIngressRule{ingress(c.peers)}}))
			verify(t, objs, policy.Options{}, att("ns1", "web", sriovA), c.want...)
		})
	}
}

// 5. Ports.
func TestSemantic5_Ports(t *testing.T) {
	all := peers(ipBlock("0.0.0.0/0"))
	cases := []struct {
		name  string
		dir   policy.Direction
		peers []mnp.MultiNetworkPolicyPeer
		ports []mnp.MultiNetworkPolicyPort
		want  []expect
	}{
		{"numeric port defaults to TCP", policy.Ingress, all, []mnp.MultiNetworkPolicyPort{port("", 80, 0)},
			[]expect{allow("in 10.1.0.11 tcp 80"), deny("in 10.1.0.11 udp 80"), deny("in 10.1.0.11 tcp 81")}},
		{"UDP", policy.Ingress, all, []mnp.MultiNetworkPolicyPort{port("UDP", 53, 0)},
			[]expect{allow("in 10.1.0.11 udp 53"), deny("in 10.1.0.11 tcp 53")}},
		{"SCTP", policy.Ingress, all, []mnp.MultiNetworkPolicyPort{port("SCTP", 9999, 0)},
			[]expect{allow("in 10.1.0.11 sctp 9999"), deny("in 10.1.0.11 tcp 9999"), deny("in 10.1.0.11 sctp 9998")}},
		{"endPort range", policy.Ingress, all, []mnp.MultiNetworkPolicyPort{port("TCP", 1000, 1010)},
			[]expect{allow("in 10.1.0.11 tcp 1000"), allow("in 10.1.0.11 tcp 1005"), allow("in 10.1.0.11 tcp 1010"), deny("in 10.1.0.11 tcp 1011"), deny("in 10.1.0.11 tcp 999")}},
		{"protocol only: every port of that protocol", policy.Ingress, all, []mnp.MultiNetworkPolicyPort{port("UDP", nil, 0)},
			[]expect{allow("in 10.1.0.11 udp 1"), allow("in 10.1.0.11 udp 65535"), deny("in 10.1.0.11 tcp 80")}},
		{"named port resolves against the selected pod on ingress", policy.Ingress, all, []mnp.MultiNetworkPolicyPort{port("TCP", "http", 0)},
			[]expect{allow("in 10.1.0.11 tcp 8080"), deny("in 10.1.0.11 tcp 80")}},
		{"named port needs the protocol to match", policy.Ingress, all, []mnp.MultiNetworkPolicyPort{port("UDP", "http", 0)},
			[]expect{deny("in 10.1.0.11 tcp 8080"), deny("in 10.1.0.11 udp 8080")}},
		{"named port resolves against each peer pod on egress", policy.Egress, peers(mnp.MultiNetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{}}), []mnp.MultiNetworkPolicyPort{port("TCP", "http", 0)},
			[]expect{allow("out 10.1.0.11 tcp 80"), deny("out 10.1.0.11 tcp 8081"), allow("out 10.1.0.20 tcp 8081"), deny("out 10.1.0.20 tcp 80"), deny("out 10.1.0.21 tcp 80")}},
		{"named port with ipBlock matches only known pods inside the block", policy.Egress, peers(ipBlock("10.1.0.0/28")), []mnp.MultiNetworkPolicyPort{port("TCP", "http", 0)},
			[]expect{allow("out 10.1.0.11 tcp 80"), deny("out 10.1.0.20 tcp 8081"), deny("out 10.1.0.5 tcp 80")}},
		{"named port without peers matches every known pod exposing it", policy.Egress, nil, []mnp.MultiNetworkPolicyPort{port("TCP", "http", 0)},
			[]expect{allow("out 10.1.0.11 tcp 80"), allow("out 10.1.0.20 tcp 8081"), deny("out 10.9.9.9 tcp 80")}},
		{"peers x ports is a product", policy.Ingress, peers(podPeer("app=db"), nsPeer("team=b")), []mnp.MultiNetworkPolicyPort{port("TCP", 80, 0), port("UDP", 53, 0)},
			[]expect{allow("in 10.1.0.11 tcp 80"), allow("in 10.1.0.11 udp 53"), allow("in 10.1.0.20 tcp 80"), allow("in 10.1.0.21 udp 53"), deny("in 10.1.0.20 tcp 53"), deny("in 10.1.0.99 tcp 80")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			objs := fixture()
			spec := mnp.MultiNetworkPolicySpec{PolicyTypes: []mnp.MultiPolicyType{mnp.PolicyTypeIngress}}
			if c.dir == policy.Egress {
				spec.PolicyTypes = egressOnly
				spec.Egress = []mnp.MultiNetworkPolicyEgressRule{egress(c.peers, c.ports...)}
			} else {
				spec.Ingress = []mnp.MultiNetworkPolicyIngressRule{ingress(c.peers, c.ports...)}
			}
			objs.Policies = append(objs.Policies, netpol("ns1", "p", "sriov-a", spec))
			verify(t, objs, policy.Options{}, att("ns1", "web", sriovA), c.want...)
		})
	}
}

// 6. IPv4 and IPv6 alike; ICMP echo switches. (ARP and neighbour discovery
// are always allowed by the datapath; see the tcdriver tests.)
func TestSemantic6_IPv6AndICMP(t *testing.T) {
	spec := mnp.MultiNetworkPolicySpec{PolicyTypes: bothTypes,
		Ingress: []mnp.MultiNetworkPolicyIngressRule{ingress(peers(ipBlock("fd00:1::/112", "fd00:1::20/127")), port("TCP", 443, 0))},
		Egress:  []mnp.MultiNetworkPolicyEgressRule{egress(peers(ipBlock("10.1.0.0/24")))},
	}
	base := []expect{
		allow("in fd00:1::11 tcp 443"), deny("in fd00:1::20 tcp 443"), deny("in fd00:1::11 tcp 80"), deny("in 10.1.0.11 tcp 443"),
		allow("out 10.1.0.20 icmp"), // a rule without ports allows every protocol
	}
	for _, c := range []struct {
		name string
		opts policy.Options
		want []expect
	}{
		{"echo dropped by default", policy.Options{}, []expect{deny("in 10.1.0.11 icmp"), deny("in fd00:1::11 icmpv6"), deny("out fd00:1::20 icmpv6")}},
		{"--accept-icmp", policy.Options{AcceptICMP: true}, []expect{allow("in 10.1.0.11 icmp"), deny("in fd00:1::11 icmpv6"), deny("out fd00:1::20 icmpv6")}},
		{"--accept-icmpv6", policy.Options{AcceptICMPv6: true}, []expect{deny("in 10.1.0.11 icmp"), allow("in fd00:1::11 icmpv6"), allow("out fd00:1::20 icmpv6")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			objs := fixture()
			objs.Policies = append(objs.Policies, netpol("ns1", "p", "sriov-a", spec))
			rs := verify(t, objs, c.opts, att("ns1", "web", sriovA), append(base, c.want...)...)
			if rs.Ingress.AcceptICMP != c.opts.AcceptICMP || rs.Ingress.AcceptICMPv6 != c.opts.AcceptICMPv6 {
				t.Errorf("echo switches not carried into the rule set: %+v", rs.Ingress)
			}
		})
	}
}

// 7. Stateful: the rule set says replies to allowed connections pass.
func TestSemantic7_Stateful(t *testing.T) {
	objs := fixture()
	objs.Policies = append(objs.Policies, netpol("ns1", "p", "sriov-a", denyAll))
	rs := verify(t, objs, policy.Options{}, att("ns1", "web", sriovA), deny("in 10.1.0.11 tcp 80"), deny("out 10.1.0.11 tcp 80"))
	if !rs.Ingress.Stateful || !rs.Egress.Stateful {
		t.Fatalf("rule sets must be stateful in both directions: %+v", rs)
	}
	if !rs.Ingress.Isolated || !rs.Egress.Isolated || len(rs.Ingress.Rules)+len(rs.Egress.Rules) != 0 {
		t.Fatalf("default deny must isolate both directions with no rules: %s", dumpJSON(rs))
	}
}

// 8. Invalid input fails closed and names the object and field.
func TestSemantic8_InvalidInputFailsClosed(t *testing.T) {
	cases := []struct {
		name      string
		spec      mnp.MultiNetworkPolicySpec
		policyFor string
		field     string
		want      []expect
	}{
		{"malformed CIDR", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{
			ingress(peers(ipBlock("10.1.0.0/33"), podPeer("app=db")))}}, "sriov-a",
			"spec.ingress[0].from[0].ipBlock.cidr", []expect{deny("in 10.1.0.20 tcp 80"), allow("in 10.1.0.11 tcp 80")}},
		{"except outside its cidr", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{
			ingress(peers(ipBlock("10.1.0.0/24", "10.2.0.0/24")))}}, "sriov-a",
			"spec.ingress[0].from[0].ipBlock.except[0]", []expect{deny("in 10.1.0.20 tcp 80")}},
		{"unknown protocol", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{
			ingress(nil, port("ICMP", nil, 0))}}, "sriov-a",
			"spec.ingress[0].ports[0]", []expect{deny("in 10.1.0.20 tcp 80"), deny("in 10.1.0.20 icmp")}},
		{"endPort below port", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{
			ingress(nil, port("TCP", 1010, 1000), port("UDP", 53, 0))}}, "sriov-a",
			"spec.ingress[0].ports[0]", []expect{deny("in 10.1.0.20 tcp 1005"), deny("in 10.1.0.20 tcp 1010"), allow("in 10.1.0.20 udp 53")}},
		{"invalid podSelector isolates the namespace and allows nothing", mnp.MultiNetworkPolicySpec{
			PodSelector: selExpr("app", "Matches", "x"),
			Ingress:     []mnp.MultiNetworkPolicyIngressRule{ingress(nil)}}, "sriov-a",
			"spec.podSelector", []expect{deny("in 10.1.0.20 tcp 80")}},
		{"invalid peer selector matches nothing", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{
			ingress(peers(mnp.MultiNetworkPolicyPeer{PodSelector: ptr(selExpr("app", metav1.LabelSelectorOpIn))}))}}, "sriov-a",
			"spec.ingress[0].from[0].podSelector", []expect{deny("in 10.1.0.11 tcp 80")}},
		{"unparsable policy-for entry is reported, valid entries still apply", denyAll, "a/b/c, sriov-a",
			"metadata.annotations[k8s.v1.cni.cncf.io/policy-for]", []expect{deny("in 10.1.0.20 tcp 80")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			objs := fixture()
			objs.Policies = append(objs.Policies, netpol("ns1", "bad", c.policyFor, c.spec))
			_, err := verifyErr(t, objs, policy.Options{}, att("ns1", "web", sriovA), c.want...)
			errs := inputErrors(err)
			if !slices.ContainsFunc(errs, func(e *policy.InputError) bool {
				return e.Kind == "MultiNetworkPolicy" && e.Namespace == "ns1" && e.Name == "bad" && e.Field == c.field
			}) {
				t.Fatalf("want an error naming MultiNetworkPolicy ns1/bad field %s, got %v", c.field, err)
			}
		})
	}

	t.Run("malformed pod annotation affects only that pod", func(t *testing.T) {
		objs := fixture()
		objs.Pods[1].Annotations["k8s.v1.cni.cncf.io/network-status"] = "{not json"
		objs.Policies = append(objs.Policies, netpol("ns1", "p", "sriov-a", mnp.MultiNetworkPolicySpec{
			Ingress: []mnp.MultiNetworkPolicyIngressRule{ingress(peers(nsPeer("")))}}))
		_, err := verifyErr(t, objs, policy.Options{}, att("ns1", "web", sriovA),
			deny("in 10.1.0.11 tcp 80"), allow("in 10.1.0.20 tcp 80"))
		if err != nil {
			t.Fatalf("a peer's bad annotation must not be reported on another pod's attachment: %v", err)
		}
		_, err = verifyErr(t, objs, policy.Options{}, att("ns1", "db", sriovA))
		if !strings.Contains(err.Error(), "Pod ns1/db: metadata.annotations[k8s.v1.cni.cncf.io/network-status]") {
			t.Fatalf("error should name the pod and annotation: %v", err)
		}
	})

	t.Run("malformed NAD keeps previous rules", func(t *testing.T) {
		objs := fixture()
		objs.NADs[0].Spec.Config = "{"
		e := policy.NewEngine(policy.Options{})
		for _, n := range objs.NADs {
			e.UpsertNAD(n)
		}
		for _, p := range objs.Pods {
			e.UpsertPod(p)
		}
		rs, err := e.Compute(att("ns1", "web", sriovA))
		if rs != nil || err == nil || !strings.Contains(err.Error(), "NetworkAttachmentDefinition ns1/sriov-a: spec.config") {
			t.Fatalf("want no rule set and an error naming the NAD, got %v, %v", rs, err)
		}
		if rs, err := e.Compute(att("ns1", "web", sriovB)); rs == nil || err != nil {
			t.Fatalf("other networks unaffected: %v %v", rs, err)
		}
	})
}

func ptr[T any](v T) *T { return &v }

// Regressions of the upstream prototype: each one once opened traffic.
func TestUpstreamRegressions(t *testing.T) {
	cases := []struct {
		name string
		spec mnp.MultiNetworkPolicySpec
		want []expect
	}{
		{"policyTypes ignored (Egress-only policy isolated ingress)", mnp.MultiNetworkPolicySpec{PolicyTypes: egressOnly},
			[]expect{allow("in 10.1.0.20 tcp 80"), deny("out 10.1.0.20 tcp 80")}},
		{"named port turned into allow-all", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{ingress(peers(podPeer("app=db")), port("TCP", "nosuchport", 0))}},
			[]expect{deny("in 10.1.0.11 tcp 80"), deny("in 10.1.0.11 tcp 8080")}},
		{"SCTP port turned into allow-all", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{ingress(peers(podPeer("app=db")), port("SCTP", 9999, 0))}},
			[]expect{allow("in 10.1.0.11 sctp 9999"), deny("in 10.1.0.11 tcp 80"), deny("in 10.1.0.11 udp 9999")}},
		{"protocol-only port turned into allow-all", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{ingress(peers(podPeer("app=db")), port("UDP", nil, 0))}},
			[]expect{allow("in 10.1.0.11 udp 7"), deny("in 10.1.0.11 tcp 80"), deny("in 10.1.0.20 udp 7")}},
		{"empty selector with ports allowed any IP", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{ingress(peers(podPeer("app=nobody")), port("TCP", 80, 0))}},
			[]expect{deny("in 10.1.0.11 tcp 80"), deny("in 192.0.2.1 tcp 80")}},
		{"endPort ignored", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{ingress(nil, port("TCP", 1000, 1002))}},
			[]expect{allow("in 10.1.0.11 tcp 1002"), deny("in 10.1.0.11 tcp 1003")}},
		{"matchExpressions failing open", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{ingress(peers(
			mnp.MultiNetworkPolicyPeer{PodSelector: ptr(selExpr("app", metav1.LabelSelectorOpIn, "client")), NamespaceSelector: ptr(selExpr("team", metav1.LabelSelectorOpNotIn, "b"))}))}},
			[]expect{deny("in 10.1.0.20 tcp 80"), deny("in 10.1.0.11 tcp 80")}},
		{"except acting as a global deny", mnp.MultiNetworkPolicySpec{Ingress: []mnp.MultiNetworkPolicyIngressRule{
			ingress(peers(ipBlock("10.1.0.0/24", "10.1.0.11/32"))), ingress(peers(podPeer("app=db")))}},
			[]expect{allow("in 10.1.0.11 tcp 80"), allow("in 10.1.0.20 tcp 80")}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			objs := fixture()
			objs.Policies = append(objs.Policies, netpol("ns1", "p", "sriov-a", c.spec))
			verify(t, objs, policy.Options{}, att("ns1", "web", sriovA), c.want...)
		})
	}
}
