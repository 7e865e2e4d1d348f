package policy_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
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

// benchCluster is the scale the issue sets: 5,000 pods in 50 namespaces,
// 1,000 policies (20 per namespace), every pod on 2 SR-IOV networks, and one
// node running 110 of the pods (220 attachments).
type benchCluster struct {
	engine    *policy.Engine
	pods      []*corev1.Pod
	localAtts []policy.Attachment
}

func newBenchCluster(b *testing.B) *benchCluster {
	b.Helper()
	const (
		namespaces   = 50
		podsPerNS    = 100
		policiesPerN = 20
		apps         = 10
		localPods    = 110
	)
	nets := []policy.NetworkRef{{Namespace: "infra", Name: "sriov-a"}, {Namespace: "infra", Name: "sriov-b"}}
	e := policy.NewEngine(policy.Options{})
	for _, n := range nets {
		e.UpsertNAD(policytest.NAD(n, "accelerated-bridge"))
	}
	c := &benchCluster{engine: e}
	var policies []*mnp.MultiNetworkPolicy
	for n := range namespaces {
		ns := fmt.Sprintf("ns%02d", n)
		e.UpsertNamespace(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{"team": fmt.Sprintf("t%d", n%5), "env": []string{"prod", "dev"}[n%2]}}})
		for i := range podsPerNS {
			idx := n*podsPerNS + i
			p := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pod%03d", i), Annotations: map[string]string{},
					Labels: map[string]string{"app": fmt.Sprintf("app%d", i%apps), "tier": []string{"fe", "be"}[i%2]}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: int32(8000 + i%3), Protocol: corev1.ProtocolTCP}}}}},
				Status: corev1.PodStatus{Phase: corev1.PodRunning},
			}
			var statuses []nadv1.NetworkStatus
			for k, net := range nets {
				addr := netip.AddrFrom4([4]byte{10, byte(k), byte(idx >> 8), byte(idx)})
				statuses = append(statuses, nadv1.NetworkStatus{Name: net.String(), Interface: fmt.Sprintf("net%d", k+1), IPs: []string{addr.String()}})
			}
			st, _ := json.Marshal(statuses)
			p.Annotations[nadv1.NetworkAttachmentAnnot] = nets[0].String() + "," + nets[1].String()
			p.Annotations[nadv1.NetworkStatusAnnot] = string(st)
			e.UpsertPod(p)
			c.pods = append(c.pods, p)
		}
		for i := range policiesPerN {
			app := fmt.Sprintf("app%d", i%apps)
			tcp := corev1.ProtocolTCP
			spec := mnp.MultiNetworkPolicySpec{PodSelector: *sel("app=" + app)}
			switch i % 4 {
			case 0: // from pods of the namespace
				spec.Ingress = []mnp.MultiNetworkPolicyIngressRule{ingress(peers(podPeer(fmt.Sprintf("app=app%d", (i+1)%apps))), port("TCP", 80, 0))}
			case 1: // from other teams' namespaces, a port range
				spec.Ingress = []mnp.MultiNetworkPolicyIngressRule{ingress(peers(
					mnp.MultiNetworkPolicyPeer{NamespaceSelector: sel(fmt.Sprintf("team=t%d", i%5)), PodSelector: sel("tier=fe")}),
					mnp.MultiNetworkPolicyPort{Protocol: &tcp, Port: ptr(intOrString(9000)), EndPort: ptr(int32(9100))})}
			case 2: // egress to an ipBlock with except, and to a named port
				spec.PolicyTypes = bothTypes
				spec.Egress = []mnp.MultiNetworkPolicyEgressRule{
					egress(peers(ipBlock("10.0.0.0/16", fmt.Sprintf("10.0.%d.0/24", i))), port("UDP", 53, 0)),
					egress(peers(podPeer("tier=be")), port("TCP", "http", 0)),
				}
			default: // from a namespace's pods by label expression
				spec.Ingress = []mnp.MultiNetworkPolicyIngressRule{ingress(peers(mnp.MultiNetworkPolicyPeer{
					PodSelector: ptr(selExpr("app", metav1.LabelSelectorOpIn, "app1", "app2", "app3"))}))}
			}
			policies = append(policies, netpol(ns, fmt.Sprintf("policy%02d", i), "infra/sriov-a, infra/sriov-b", spec))
		}
	}
	for _, p := range policies {
		e.UpsertPolicy(p)
	}
	// The node's pods: spread over the namespaces.
	for i := range localPods {
		p := c.pods[i*(len(c.pods)/localPods)]
		atts, err := policy.PodAttachments(p)
		if err != nil {
			b.Fatal(err)
		}
		c.localAtts = append(c.localAtts, atts...)
	}
	e.SetAttachments(c.localAtts)
	return c
}

// BenchmarkRenderNode computes every rule set of one node from cold caches,
// as the agent does at start-up.
func BenchmarkRenderNode(b *testing.B) {
	c := newBenchCluster(b)
	b.ReportAllocs()
	defer reportCPU(b)()
	var rules int
	for b.Loop() {
		c.engine.DropCaches()
		rss, _ := c.engine.ComputeAll()
		if len(rss) != 220 {
			b.Fatalf("%d rule sets, want 220", len(rss))
		}
		rules = 0
		for _, rs := range rss {
			rules += len(rs.Ingress.Rules) + len(rs.Egress.Rules)
		}
	}
	b.ReportMetric(float64(rules), "rules/node")
}

// BenchmarkRenderOnePodChange changes one remote pod's labels, asks the
// engine which local attachments that affects, and recomputes only those.
func BenchmarkRenderOnePodChange(b *testing.B) {
	c := newBenchCluster(b)
	if _, err := c.engine.ComputeAll(); err != nil { // the agent has computed everything once
		b.Fatal(err)
	}
	pod := c.pods[len(c.pods)/2+1].DeepCopy()
	labelSets := []map[string]string{{"app": "app1", "tier": "fe"}, {"app": "app2", "tier": "be"}}
	b.ReportAllocs()
	defer reportCPU(b)()
	var affected int
	i := 0
	for b.Loop() {
		pod.Labels = labelSets[i%2]
		i++
		atts := c.engine.UpsertPod(pod)
		affected = len(atts)
		if _, err := c.engine.ComputeFor(atts); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(affected), "affected-attachments")
}

func intOrString(n int) intstr.IntOrString { return intstr.FromInt32(int32(n)) }

// reportCPU reports the process CPU time per operation next to the wall
// time, which is what matters on a shared (CI) machine where ns/op also
// counts time spent waiting for a core. Use: defer reportCPU(b)().
func reportCPU(b *testing.B) func() {
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
