package app

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// The bridge placement as the agent drives it: pods A (VF 0), B (VF 1) and
// C (VF 2) on one bridge with the uplink; B's ingress admits A and
// 192.0.2.0/24 on TCP 80.

const (
	podA, podB, podC = "10.1.0.10", "10.1.0.11", "10.1.0.12"
)

func bPolicy() *mnpv1beta1.MultiNetworkPolicy {
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(80)
	return &mnpv1beta1.MultiNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: fcNS, Name: "b", Annotations: map[string]string{policy.PolicyForAnnotation: fcNet}},
		Spec: mnpv1beta1.MultiNetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}},
			PolicyTypes: []mnpv1beta1.MultiPolicyType{mnpv1beta1.PolicyTypeIngress},
			Ingress: []mnpv1beta1.MultiNetworkPolicyIngressRule{{
				Ports: []mnpv1beta1.MultiNetworkPolicyPort{{Protocol: &tcp, Port: &port}},
				From: []mnpv1beta1.MultiNetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}}},
					{IPBlock: &mnpv1beta1.IPBlock{CIDR: "192.0.2.0/24"}},
				},
			}},
		},
	}
}

// setupABC runs the three pods and B's policy; before runs before the
// agent starts (pods are created after).
func setupABC(t *testing.T, before func(*harness)) *harness {
	return setupABCWith(t, tcdriver.Options{}, before)
}

// setupABCWith is setupABC with the driver's options.
func setupABCWith(t *testing.T, tcOpts tcdriver.Options, before func(*harness)) *harness {
	h := newHarnessTC(t, tcOpts, before)
	h.createNAD(sriovNAD(fcNS, "net", "accelerated-bridge"))
	for i, p := range []struct{ name, ip string }{{"a", podA}, {"b", podB}, {"c", podC}} {
		h.pr.set(fcNS, p.name, hVF(i))
		h.createPod(runningPod(fcNS, p.name, fcNet, p.ip, map[string]string{"app": p.name}))
	}
	_, err := h.clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(fcNS).Create(hctx(), bPolicy(), metav1.CreateOptions{})
	h.must(err, "policy")
	return h
}

// synTo traces a new TCP connection from src to the pod of VF dstVF
// entering by port dev.
func (h *harness) synTo(dev, src string, dstVF int, dst string, port uint16) tcdriver.Verdict {
	mac, _ := tcdriver.MACOf(hMAC(dstVF))
	p := tcdriver.Packet{EthType: tcdriver.EthIPv4, DstMAC: mac, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst),
		IPProto: tcdriver.ProtoTCP, SrcPort: 40000, DstPort: port}
	return tcdriver.Trace(h.tc.Filters(dev, tcdriver.HookIngress), tcdriver.HookIngress, p, tcdriver.NewConntrack()).Verdict
}

// dispatchesTo lists the ports whose ingress hook dispatches frames for
// the MAC to a section.
func (h *harness) dispatchesTo(mac net.HardwareAddr) []string {
	m, _ := tcdriver.MACOf(mac)
	var out []string
	for _, dev := range h.tc.Devices() {
		for _, f := range h.tc.Filters(dev, tcdriver.HookIngress) {
			if f.Match.DstMAC == m && f.Match.DstMACMask != (tcdriver.MAC{}) {
				out = append(out, dev)
				break
			}
		}
	}
	return out
}

func TestBridgeDecidesWhereFramesEnter(t *testing.T) {
	h := setupABC(t, nil)
	cases := []struct {
		what, dev, src string
		port           uint16
		want           tcdriver.Verdict
	}{
		{"A → B on A's port", hRep(0), podA, 80, tcdriver.Pass},
		{"A → B, another port, on A's port", hRep(0), podA, 443, tcdriver.Drop},
		{"C → B on C's port", hRep(2), podC, 80, tcdriver.Drop},
		{"outside allowed → B on the uplink", hUplink, "192.0.2.7", 80, tcdriver.Pass},
		{"outside denied → B on the uplink", hUplink, "10.1.0.20", 80, tcdriver.Drop},
	}
	h.eventually("B's ingress decided on every port", func() bool {
		for _, c := range cases {
			if h.synTo(c.dev, c.src, 1, podB, c.port) != c.want {
				return false
			}
		}
		return true
	})
	h.settle()
	for _, c := range cases {
		if got := h.synTo(c.dev, c.src, 1, podB, c.port); got != c.want {
			t.Errorf("%s: %s, want %s", c.what, got, c.want)
		}
	}
	// Nothing that decides sits on an egress hook of a pod's port.
	for i := range 3 {
		if n := len(h.tc.Filters(hRep(i), tcdriver.HookEgress)); n != 0 {
			t.Errorf("%s: %d filters on the egress hook", hRep(i), n)
		}
	}
	// The free VF on the bridge stays closed alone, never an uplink.
	if got := h.allowed(hRep(3), "10.1.0.99"); len(got) != 0 {
		t.Errorf("free VF %s allows %v", hRep(3), got)
	}
	if got, want := strings.Join(h.dispatchesTo(hMAC(1)), ","), "p0,pf0vf0,pf0vf2"; got != want {
		t.Errorf("ports dispatching to B: %s, want %s", got, want)
	}

	// An unchanged resync writes nothing.
	before := h.tc.Stats()
	h.must(h.agent.resync(hctx()), "resync")
	h.settle()
	if d := h.tc.Stats(); d.Adds+d.Replaces+d.Deletes+d.Flushes != before.Adds+before.Replaces+before.Deletes+before.Flushes {
		t.Errorf("an unchanged resync wrote: %+v then %+v", before, d)
	}
}

// TestBridgePodLeaving: B deleted, its section goes from every port, and
// its VF is closed alone.
func TestBridgePodLeaving(t *testing.T) {
	h := setupABC(t, nil)
	h.eventually("B dispatched to", func() bool { return len(h.dispatchesTo(hMAC(1))) == 3 })
	h.must(h.clients.Kube.CoreV1().Pods(fcNS).Delete(hctx(), "b", metav1.DeleteOptions{}), "delete b")
	h.pr.set(fcNS, "b")
	h.eventually("B's section removed from every port", func() bool { return len(h.dispatchesTo(hMAC(1))) == 0 })
	h.eventually("B's VF closed", func() bool { return len(h.allowed(hRep(1), podB)) == 0 && h.ours(hRep(1)) > 0 })
	h.settle()
	// A and C are open again to each other and from outside: no receiver
	// is left, and no pod on the bridge isolates its ingress.
	for _, dev := range []string{hUplink, hRep(0), hRep(2)} {
		if got := h.synTo(dev, "10.1.0.20", 2, podC, 443); got != tcdriver.Pass {
			t.Errorf("%s → C: %s, want pass", dev, got)
		}
	}
}

// watchUnfiltered counts, from now until the test ends, the kernel states
// in which dev's ingress hook holds no filter (the harness installs no
// foreign ones): a pod's port without a verdict.
func (h *harness) watchUnfiltered(t *testing.T, dev string) func() int {
	var mu sync.Mutex
	n := 0
	h.tc.Watch(func(d string, ingress []*tcdriver.Filter) {
		if d == dev && len(ingress) == 0 {
			mu.Lock()
			n++
			mu.Unlock()
		}
	})
	t.Cleanup(func() { h.tc.Watch(nil) })
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}

// TestBridgeVFNeverUnfiltered: at no moment between two kernel writes is a
// pod's VF port without filters of ours: not when a bridge is applied
// while the port of the VF's owner is not planned (the driver drops a port
// that leaves the bridge program, so the agent closes it alone first), nor
// while its pod leaves and the next takes the VF.
func TestBridgeVFNeverUnfiltered(t *testing.T) {
	h := setupABC(t, nil)
	h.eventually("B dispatched to", func() bool { return len(h.dispatchesTo(hMAC(1))) == 3 })
	h.settle()
	unfiltered := h.watchUnfiltered(t, hRep(1))

	// The bridge applied while the VF's owner has no port planned and its
	// VF cannot be resolved (as for a pod that just took the VF): the VF
	// is left out of the program, and must be closed alone, not dropped.
	h.sw.RemoveRepresentor(hVF(1))
	h.agent.setPort(hRep(1), nil)
	_, err := h.agent.syncBridge(hctx(), hBridge)
	h.must(err, "sync bridge")
	if got := h.allowed(hRep(1), podB); len(got) != 0 {
		t.Errorf("B's VF left out of the bridge allows %v", got)
	}
	h.sw.AddVF(hPF, 1, hVF(1), hRep(1))
	h.must(h.agent.resync(hctx()), "resync")
	h.eventually("B dispatched to again", func() bool { return len(h.dispatchesTo(hMAC(1))) == 3 })

	// The kubelet hands B's VF to D.
	h.pr.set(fcNS, "b")
	h.pr.set(fcNS, "d", hVF(1))
	h.createPod(runningPod(fcNS, "d", fcNet, "10.1.0.13", map[string]string{"app": "b"}))
	h.must(h.clients.Kube.CoreV1().Pods(fcNS).Delete(hctx(), "b", metav1.DeleteOptions{}), "delete b")
	h.eventually("D dispatched to", func() bool { return len(h.dispatchesTo(hMAC(1))) == 3 })
	h.settle()
	if n := unfiltered(); n > 0 {
		t.Errorf("%s was without filters of ours in %d kernel states", hRep(1), n)
	}
}

// TestBridgeMACUnknown: a VF whose MAC neither the PF nor the pod's
// network-status gives, or that they give differently, is closed both
// ways with an Event naming the pod and network; once the MAC is known,
// the pod is enforced on the bridge.
func TestBridgeMACUnknown(t *testing.T) {
	for _, tc := range []struct {
		name, statusMAC, want string
	}{
		{"missing", "", "no MAC address known"},
		{"malformed in network-status", "02:00:00:00:zz:02", "not an Ethernet MAC address"},
		{"PF and network-status disagree", "02:00:00:00:00:99", "the PF reports MAC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarnessWith(t, func(h *harness) {
				if tc.statusMAC == "" {
					h.sw.SetVFMAC(hVF(1), nil)
				}
			})
			h.createNAD(sriovNAD(fcNS, "net", "accelerated-bridge"))
			h.pr.set(fcNS, "a", hVF(0))
			h.createPod(runningPod(fcNS, "a", fcNet, podA, map[string]string{"app": "a"}))
			h.pr.set(fcNS, "b", hVF(1))
			b := runningPod(fcNS, "b", fcNet, podB, map[string]string{"app": "b"})
			if tc.statusMAC != "" {
				b.Annotations[nadv1.NetworkStatusAnnot] = fmt.Sprintf(`[{"name":%q,"interface":"net1","ips":[%q],"mac":%q}]`, fcNet, podB, tc.statusMAC)
			}
			h.createPod(b)
			_, err := h.clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(fcNS).Create(hctx(), bPolicy(), metav1.CreateOptions{})
			h.must(err, "policy")
			h.warning("Pod", "b", "network "+fcNet, tc.want)
			h.settle()
			if got := h.allowed(hRep(1), podB); len(got) != 0 {
				t.Errorf("B without a usable MAC allows %v, want closed", got)
			}
			if got := h.dispatchesTo(hMAC(1)); len(got) != 0 {
				t.Errorf("ports dispatching to B: %v, want none (B is closed alone)", got)
			}
			if got := h.synTo(hRep(0), podA, 1, podB, 80); got != tcdriver.Pass {
				t.Errorf("A → B on A's port: %s, want pass (then dropped at B's egress hook)", got)
			}
			if got := h.allowed(hRep(0), podA); len(got) != 8 {
				t.Errorf("A (open) allows %v, want everything", got)
			}
			failed := false
			for _, st := range h.agent.Attachments() {
				failed = failed || st.ID == fcNS+"/b/"+fcNet && st.State == stateFailed
			}
			if !failed {
				t.Errorf("attachments %+v: want B failed", h.agent.Attachments())
			}

			// The MAC becomes known: B joins the bridge program.
			h.sw.SetVFMAC(hVF(1), hMAC(1))
			h.editPod("b", func(p *corev1.Pod) {
				p.Annotations[nadv1.NetworkStatusAnnot] = fmt.Sprintf(`[{"name":%q,"interface":"net1","ips":[%q],"mac":%q}]`, fcNet, podB, hMAC(1))
			})
			h.eventually("B enforced on the bridge", func() bool {
				return h.synTo(hRep(0), podA, 1, podB, 80) == tcdriver.Pass && h.synTo(hUplink, "10.1.0.20", 1, podB, 80) == tcdriver.Drop &&
					len(h.tc.Filters(hRep(1), tcdriver.HookEgress)) == 0
			})
		})
	}
}

// TestBridgeRenamedRepresentorIsNoUplink: a pod's representor renamed
// behind the agent's back, then another pod's change re-applies the
// bridge before the pod's own resync: the renamed port is known for the
// pod's, never taken for an uplink (which would open its egress).
func TestBridgeRenamedRepresentorIsNoUplink(t *testing.T) {
	h := newHarness(t)
	h.createNAD(sriovNAD(fcNS, "net", "accelerated-bridge"))
	h.pr.set(fcNS, "db", hVF(0))
	h.createPod(runningPod(fcNS, "db", fcNet, fcPodIP, map[string]string{"app": "db"}))
	_, err := h.clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(fcNS).Create(hctx(), denyAllBoth(fcNS, "deny", fcNet), metav1.CreateOptions{})
	h.must(err, "policy")
	h.eventually("db closed both ways", func() bool { return h.ours(hRep(0)) > 0 && len(h.allowed(hRep(0), fcPodIP)) == 0 })
	h.settle()

	h.tc.RenameDevice(hRep(0), "renamed0")
	h.sw.SetMaster(hRep(0), "").AddVF(hPF, 0, hVF(0), "renamed0").SetMaster("renamed0", hBridge)
	// Another pod joins the bridge: its sync applies the bridge.
	h.pr.set(fcNS, "web", hVF(1))
	h.createPod(runningPod(fcNS, "web", fcNet, "10.1.0.11", nil))
	h.eventually("web programmed", func() bool {
		for _, st := range h.agent.Attachments() {
			if st.ID == fcNS+"/web/"+fcNet && st.State == stateProgrammed {
				return true
			}
		}
		return false
	})
	h.settle()
	mac, _ := tcdriver.MACOf(hMAC(0))
	out := tcdriver.Packet{EthType: tcdriver.EthIPv4, DstMAC: tcdriver.MAC{0x02, 0xee, 0, 0, 0, 1}, Src: netip.MustParseAddr(fcPodIP), Dst: netip.MustParseAddr("192.0.2.7"), IPProto: tcdriver.ProtoTCP, SrcPort: 40000, DstPort: 80}
	if v := tcdriver.Trace(h.tc.Filters("renamed0", tcdriver.HookIngress), tcdriver.HookIngress, out, tcdriver.NewConntrack()).Verdict; v != tcdriver.Drop {
		t.Errorf("db → outside on its renamed representor: %s, want drop", v)
	}
	if got := h.synTo(hUplink, "192.0.2.7", 0, fcPodIP, 80); got != tcdriver.Drop {
		t.Errorf("outside → db on the uplink: %s, want drop (dispatched on %s)", got, mac)
	}
}

func denyAllBoth(ns, name, network string) *mnpv1beta1.MultiNetworkPolicy {
	p := denyAllIngress(ns, name, network)
	p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, mnpv1beta1.PolicyTypeEgress)
	return p
}
