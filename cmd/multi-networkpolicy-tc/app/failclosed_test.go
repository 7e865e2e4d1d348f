package app

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	dto "github.com/prometheus/client_model/go"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

const (
	fcNS    = "shop"
	fcNet   = "shop/net"
	fcPodIP = "10.1.0.10"
)

// setupDenyAll programs pod shop/db on VF 0 with a deny-all ingress policy
// and returns what its representor allows.
func setupDenyAll(t *testing.T) (*harness, map[string]bool) {
	h := newHarness(t)
	h.createNAD(sriovNAD(fcNS, "net", "accelerated-bridge"))
	h.pr.set(fcNS, "db", hVF(0))
	h.createPod(runningPod(fcNS, "db", fcNet, fcPodIP, map[string]string{"app": "db"}))
	_, err := h.clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(fcNS).Create(hctx(), denyAllIngress(fcNS, "deny", fcNet), metav1.CreateOptions{})
	h.must(err, "policy")
	h.eventually("deny-all programmed", func() bool { return h.ours(hRep(0)) > 0 })
	h.settle()
	before := h.allowed(hRep(0), fcPodIP)
	if before["in 10.1.0.20:80"] || !before["out 10.1.0.20:80"] {
		t.Fatalf("deny-all ingress not enforced: %v", before)
	}
	return h, before
}

func (h *harness) createNAD(n *nadv1.NetworkAttachmentDefinition) {
	h.t.Helper()
	_, err := h.clients.NAD.K8sCniCncfIoV1().NetworkAttachmentDefinitions(n.Namespace).Create(hctx(), n, metav1.CreateOptions{})
	h.must(err, "create NAD")
}

func (h *harness) createPod(p *corev1.Pod) {
	h.t.Helper()
	_, err := h.clients.Kube.CoreV1().Pods(p.Namespace).Create(hctx(), p, metav1.CreateOptions{})
	h.must(err, "create pod")
}

func (h *harness) editNAD(name string, edit func(*nadv1.NetworkAttachmentDefinition)) {
	h.t.Helper()
	nads := h.clients.NAD.K8sCniCncfIoV1().NetworkAttachmentDefinitions(fcNS)
	n, err := nads.Get(hctx(), name, metav1.GetOptions{})
	h.must(err, "get NAD")
	edit(n)
	_, err = nads.Update(hctx(), n, metav1.UpdateOptions{})
	h.must(err, "update NAD")
}

func (h *harness) editPod(name string, edit func(*corev1.Pod)) {
	h.t.Helper()
	pods := h.clients.Kube.CoreV1().Pods(fcNS)
	p, err := pods.Get(hctx(), name, metav1.GetOptions{})
	h.must(err, "get pod")
	edit(p)
	_, err = pods.Update(hctx(), p, metav1.UpdateOptions{})
	h.must(err, "update pod")
}

// warning waits for a Warning Event on the object whose message holds all
// of the words.
func (h *harness) warning(kind, name string, words ...string) {
	h.t.Helper()
	var seen []string
	defer func() {
		if h.t.Failed() {
			h.t.Logf("Events on %s %s: %s", kind, name, strings.Join(seen, " | "))
		}
	}()
	h.eventually(kind+" "+name+" Event with "+strings.Join(words, ", "), func() bool {
		list, err := h.clients.Kube.CoreV1().Events(fcNS).List(hctx(), metav1.ListOptions{})
		h.must(err, "events")
		seen = seen[:0]
		for _, e := range list.Items {
			if e.InvolvedObject.Kind != kind || e.InvolvedObject.Name != name || e.Type != corev1.EventTypeWarning {
				continue
			}
			seen = append(seen, e.Reason+": "+e.Message)
			if containsAll(e.Message, words) {
				return true
			}
		}
		return false
	})
}

func containsAll(s string, words []string) bool {
	for _, w := range words {
		if !strings.Contains(s, w) {
			return false
		}
	}
	return true
}

// subset fails unless every probe allowed now was allowed before.
func subset(t *testing.T, now, before map[string]bool) {
	t.Helper()
	for p := range now {
		if !before[p] {
			t.Errorf("now allowed, before not: %s (now %v, before %v)", p, slices.Sorted(maps.Keys(now)), slices.Sorted(maps.Keys(before)))
		}
	}
}

// TestBadInputKeepsIsolation is the table: a programmed deny-all
// pod, then one object made unusable. The representor keeps its rules and
// an Event names the object, the field and the fix.
func TestBadInputKeepsIsolation(t *testing.T) {
	tests := []struct {
		name       string
		edit       func(*harness)
		kind, obj  string
		eventWords []string
	}{
		{"NAD spec.config invalid JSON", func(h *harness) {
			h.editNAD("net", func(n *nadv1.NetworkAttachmentDefinition) { n.Spec.Config = `{"type":` })
		}, "NetworkAttachmentDefinition", "net", []string{"spec.config", "does not parse", "keeps its last rules", "fix:"}},
		{"NAD plugin type changed to one not enforced", func(h *harness) {
			h.editNAD("net", func(n *nadv1.NetworkAttachmentDefinition) {
				n.Spec.Config = `{"cniVersion":"0.4.0","name":"net","type":"macvlan"}`
			})
		}, "NetworkAttachmentDefinition", "net", []string{"spec.config", "--network-plugins", "keeps its last rules", "fix:"}},
		{"NAD deleted", func(h *harness) {
			h.must(h.clients.NAD.K8sCniCncfIoV1().NetworkAttachmentDefinitions(fcNS).Delete(hctx(), "net", metav1.DeleteOptions{}), "delete NAD")
		}, "Pod", "db", []string{"shop/net", "not found", "keep", "fix:"}},
		{"pod networks annotation garbled", func(h *harness) {
			h.editPod("db", func(p *corev1.Pod) { p.Annotations[nadv1.NetworkAttachmentAnnot] = `[{"name":` })
		}, "Pod", "db", []string{nadv1.NetworkAttachmentAnnot, "keep the rules they had", "fix:"}},
		{"pod networks annotation names another, unpoliced network", func(h *harness) {
			h.createNAD(sriovNAD(fcNS, "net2", "accelerated-bridge"))
			h.editPod("db", func(p *corev1.Pod) { p.Annotations[nadv1.NetworkAttachmentAnnot] = "shop/net2" })
		}, "Pod", "db", []string{"no longer lists network shop/net", "keeps the rules of network shop/net", "fix:"}},
		{"NAD resourceName annotation removed", func(h *harness) {
			h.editNAD("net", func(n *nadv1.NetworkAttachmentDefinition) { delete(n.Annotations, podresources.ResourceNameAnnotation) })
		}, "NetworkAttachmentDefinition", "net", []string{podresources.ResourceNameAnnotation, "keeps the rules", "fix:"}},
		{"PodResources lists more devices than networks", func(h *harness) {
			h.pr.set(fcNS, "db", hVF(0), hVF(1))
			h.must(h.agent.resync(hctx()), "resync")
		}, "Pod", "db", []string{podresources.ErrDeviceCountMismatch.Error(), "fix:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, before := setupDenyAll(t)
			filters := h.ours(hRep(0))
			tt.edit(h)
			h.warning(tt.kind, tt.obj, tt.eventWords...)
			h.settle()
			if n := h.ours(hRep(0)); n == 0 {
				t.Fatalf("%s: all filters removed (had %d): fail-open", hRep(0), filters)
			}
			subset(t, h.allowed(hRep(0), fcPodIP), before)
		})
	}
}

// TestUnmappableNewPodIsIsolated: a pod the agent never programmed whose
// networks cannot be mapped gets its VFs of enforced resources isolated
// both ways; once its input is valid it gets its policy's rules.
func TestUnmappableNewPodIsIsolated(t *testing.T) {
	tests := []struct {
		name  string
		setup func(h *harness)
		fix   func(h *harness)
	}{
		{"networks annotation garbled", func(h *harness) {
			h.pr.set(fcNS, "web", hVF(1))
			p := runningPod(fcNS, "web", fcNet, "10.1.0.11", nil)
			p.Annotations[nadv1.NetworkAttachmentAnnot] = "shop/net@@"
			h.createPod(p)
		}, func(h *harness) {
			h.editPod("web", func(p *corev1.Pod) { p.Annotations[nadv1.NetworkAttachmentAnnot] = fcNet })
		}},
		{"two VFs for one network", func(h *harness) {
			h.pr.set(fcNS, "web", hVF(1), hVF(2))
			h.createPod(runningPod(fcNS, "web", fcNet, "10.1.0.11", nil))
		}, func(h *harness) {
			// the pod is recreated with the right request
			h.must(h.clients.Kube.CoreV1().Pods(fcNS).Delete(hctx(), "web", metav1.DeleteOptions{}), "delete")
			h.pr.set(fcNS, "web", hVF(1))
			p := runningPod(fcNS, "web", fcNet, "10.1.0.11", nil)
			p.UID += "-2"
			h.createPod(p)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.createNAD(sriovNAD(fcNS, "net", "accelerated-bridge"))
			tt.setup(h)
			h.warning("Pod", "web", "isolated both ways", "fix:")
			h.eventually("unmapped VF isolated", func() bool { return h.ours(hRep(1)) > 0 })
			h.settle()
			if got := h.allowed(hRep(1), "10.1.0.11"); len(got) != 0 {
				t.Errorf("unmapped VF allows %v, want nothing", got)
			}
			if st := h.agent.Attachments(); len(st) == 0 || st[0].State != stateHeld {
				t.Errorf("attachments %+v, want one held", st)
			}
			// Valid input, no policy: nothing isolates the pod any more;
			// a VF it no longer holds is closed, as free VFs are.
			tt.fix(h)
			h.eventually("policy's rules (none) programmed", func() bool {
				return h.ours(hRep(1)) == 0 && h.ours(hRep(2)) > 0 && len(h.allowed(hRep(2), "10.1.0.12")) == 0
			})
			h.settle()
			if st := h.agent.Attachments(); len(st) != 1 || st[0].ID != "shop/web/shop/net" || st[0].State != stateProgrammed {
				t.Errorf("attachments %+v, want shop/web/shop/net programmed", st)
			}
		})
	}
}

// TestReallyGonePodLosesItsRules: deleted, finished, or its VF released by
// the kubelet, the pod's VF is closed as a free VF is; a valid input change
// (the policy deleted) lifts isolation as it should.
func TestReallyGonePodLosesItsRules(t *testing.T) {
	tests := []struct {
		name string
		gone func(h *harness)
		open bool // valid input, not gone: no filters of ours
	}{
		{"deleted", func(h *harness) {
			h.must(h.clients.Kube.CoreV1().Pods(fcNS).Delete(hctx(), "db", metav1.DeleteOptions{}), "delete")
		}, false},
		{"finished", func(h *harness) {
			p, err := h.clients.Kube.CoreV1().Pods(fcNS).Get(hctx(), "db", metav1.GetOptions{})
			h.must(err, "get")
			p.Status.Phase = corev1.PodSucceeded
			_, err = h.clients.Kube.CoreV1().Pods(fcNS).UpdateStatus(hctx(), p, metav1.UpdateOptions{})
			h.must(err, "status")
		}, false},
		{"VF released by the kubelet", func(h *harness) {
			h.pr.setResource(fcNS, "db", "example.com/gpu", "gpu-0") // holds no VF any more
			h.must(h.agent.resync(hctx()), "resync")
		}, false},
		{"policy deleted (valid input)", func(h *harness) {
			h.must(h.clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(fcNS).Delete(hctx(), "deny", metav1.DeleteOptions{}), "delete policy")
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := setupDenyAll(t)
			tt.gone(h)
			if tt.open {
				h.eventually("rules removed", func() bool { return h.ours(hRep(0)) == 0 })
				return
			}
			h.eventually("VF closed", func() bool { return len(h.allowed(hRep(0), fcPodIP)) == 0 })
			h.settle()
			if st := h.agent.Attachments(); len(st) != 0 {
				t.Errorf("attachments of a gone pod: %+v", st)
			}
		})
	}
}

// TestHeldAttachmentRepairsAndRecovers: while held, a representor flushed
// by hand gets the last good rules back at resync; once the input is valid
// again, changes apply.
func TestHeldAttachmentRepairsAndRecovers(t *testing.T) {
	h, before := setupDenyAll(t)
	want := h.ours(hRep(0))
	h.editNAD("net", func(n *nadv1.NetworkAttachmentDefinition) { n.Spec.Config = "not json" })
	h.warning("NetworkAttachmentDefinition", "net", "does not parse")
	h.settle()
	h.must(h.tc.Remove(hctx(), hRep(0)), "flush by hand")
	h.must(h.agent.resync(hctx()), "resync")
	h.eventually("last good rules restored", func() bool { return h.ours(hRep(0)) == want })
	subset(t, h.allowed(hRep(0), fcPodIP), before)
	if st := h.agent.Attachments(); len(st) != 1 || st[0].State != stateHeld {
		t.Errorf("attachments %+v, want one held", st)
	}
	h.editNAD("net", func(n *nadv1.NetworkAttachmentDefinition) {
		n.Spec.Config = `{"cniVersion":"0.4.0","name":"net","type":"accelerated-bridge"}`
	})
	h.must(h.clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(fcNS).Delete(hctx(), "deny", metav1.DeleteOptions{}), "delete policy")
	h.eventually("valid input applies again", func() bool { return h.ours(hRep(0)) == 0 })
}

// TestPolicyEnforcingNothingIsReported: a Warning Event on the policy names
// the network and which of the two reasons it is.
func TestPolicyEnforcingNothingIsReported(t *testing.T) {
	h := newHarness(t)
	h.createNAD(sriovNAD(fcNS, "mac", "macvlan"))
	_, err := h.clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(fcNS).Create(hctx(), denyAllIngress(fcNS, "p", "nope, mac"), metav1.CreateOptions{})
	h.must(err, "policy")
	h.warning("MultiNetworkPolicy", "p", "network shop/nope", "no NetworkAttachmentDefinition", "enforces nothing", "fix:")
	h.warning("MultiNetworkPolicy", "p", "network shop/mac", `"macvlan"`, "--network-plugins", "fix:")
	// Once the missing NAD exists, only the other network is left.
	h.createNAD(sriovNAD(fcNS, "nope", "accelerated-bridge"))
	h.settle()
	if u := h.agent.engine.UnenforcedNetworks(fcNS, "p"); len(u) != 1 || u[0].Network.Name != "mac" {
		t.Errorf("unenforced networks after the NAD appeared: %v", u)
	}
}

// TestReadyMeansProgrammedOrReported: /readyz turns ready only once every
// attachment present at start is programmed, or failed with an Event.
func TestReadyMeansProgrammedOrReported(t *testing.T) {
	world := func(h *harness) {
		h.createNAD(sriovNAD(fcNS, "net", "accelerated-bridge"))
		h.pr.set(fcNS, "db", hVF(0))
		h.pr.set(fcNS, "web", hVF(1))
		h.createPod(runningPod(fcNS, "db", fcNet, fcPodIP, nil))
		h.createPod(runningPod(fcNS, "web", fcNet, "10.1.0.11", nil))
		_, err := h.clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(fcNS).Create(hctx(), denyAllIngress(fcNS, "deny", fcNet), metav1.CreateOptions{})
		h.must(err, "policy")
	}
	t.Run("all programmed", func(t *testing.T) {
		h := newHarnessWith(t, world)
		// Ready was observed: the rules are already in the kernel.
		for i := range 2 {
			if h.ours(hRep(i)) == 0 {
				t.Errorf("ready, but %s has no filters", hRep(i))
			}
		}
	})
	t.Run("one representor missing", func(t *testing.T) {
		h := newHarnessWith(t, func(h *harness) {
			world(h)
			h.sw.RemoveRepresentor(hVF(1))
		})
		if h.ours(hRep(0)) == 0 {
			t.Errorf("ready, but %s has no filters", hRep(0))
		}
		states := map[string]string{}
		for _, a := range h.agent.Attachments() {
			states[a.ID] = a.State
		}
		if states["shop/db/shop/net"] != stateProgrammed || states["shop/web/shop/net"] != stateFailed {
			t.Errorf("states %v, want db programmed and web failed", states)
		}
		h.warning("Pod", "web", hVF(1), "fix") // RepresentorNotFound
	})
}

func TestLogLimiter(t *testing.T) {
	l := newLogLimiter(10 * time.Second)
	now := time.Unix(0, 0)
	l.now = func() time.Time { return now }
	got := []bool{l.allow("a"), l.allow("a"), l.allow("b")}
	now = now.Add(11 * time.Second)
	got = append(got, l.allow("a"))
	if want := []bool{true, false, true, true}; !slices.Equal(got, want) {
		t.Errorf("allow = %v, want %v", got, want)
	}
}

// TestOrphansCleaned: at start, the rules on the representor of a VF no
// pod holds (its pod deleted while the agent was down) are replaced by a
// free VF's and counted; free VFs are closed; a held VF's rules and
// another tool's filters stay.
func TestOrphansCleaned(t *testing.T) {
	isolated := &policy.RuleSet{Ingress: policy.DirectionRules{Isolated: true, Stateful: true}}
	foreign := &tcdriver.Filter{Hook: tcdriver.HookIngress, Prio: 10, Protocol: tcdriver.EthIPv4, Handle: 1,
		Match: tcdriver.Match{IPProto: tcdriver.ProtoUDP}, Actions: []tcdriver.Action{{Kind: tcdriver.ActAccept}}}
	h := newHarnessWith(t, func(h *harness) {
		h.createNAD(sriovNAD(fcNS, "net", "accelerated-bridge"))
		h.pr.set(fcNS, "db", hVF(0))
		h.createPod(runningPod(fcNS, "db", fcNet, fcPodIP, nil))
		_, err := h.clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(fcNS).Create(hctx(), denyAllIngress(fcNS, "deny", fcNet), metav1.CreateOptions{})
		h.must(err, "policy")
		for _, i := range []int{0, 2} { // VF 2's pod is gone
			h.must(h.tc.Apply(hctx(), hRep(i), isolated), "left by the last run")
		}
		h.must(h.tc.AddForeign(hRep(3), foreign), "another tool's filter")
	})
	closed := func(i int) bool { return h.ours(hRep(i)) > 0 && len(h.allowed(hRep(i), "10.1.0.12")) == 0 }
	for _, i := range []int{1, 2, 3} {
		if !closed(i) {
			t.Errorf("free VF %d is not closed", i)
		}
	}
	if h.ours(hRep(0)) == 0 || len(h.allowed(hRep(0), fcPodIP)) == 0 {
		t.Errorf("%s (held by shop/db, no policy on egress) lost its rules or allows nothing", hRep(0))
	}
	if st, _ := h.tc.Dump(hctx(), hRep(3)); len(st.Filters)-len(st.Ours()) != 1 {
		t.Errorf("%s: another tool's filter touched: %s", hRep(3), st.Canonical())
	}
	var m dto.Metric
	h.must(h.agent.metrics.orphansCleaned.Write(&m), "read metric")
	if got := m.GetCounter().GetValue(); got != 1 {
		t.Errorf("orphans_cleaned_total = %v, want 1", got)
	}
}

// TestStrayFiltersRemoved: at start, our filters on devices that are no
// allocatable VF's representor and no attachment's (a representor whose VF
// left the pool, a port that left the bridge for another use) are removed
// and counted; another tool's filters there stay. While some allocatable VF
// cannot be resolved, nothing is removed: the device might be its
// representor under a new name.
func TestStrayFiltersRemoved(t *testing.T) {
	isolated := &policy.RuleSet{Ingress: policy.DirectionRules{Isolated: true, Stateful: true}}
	foreign := &tcdriver.Filter{Hook: tcdriver.HookIngress, Prio: 10, Protocol: tcdriver.EthIPv4, Handle: 1,
		Match: tcdriver.Match{IPProto: tcdriver.ProtoUDP}, Actions: []tcdriver.Action{{Kind: tcdriver.ActAccept}}}
	for _, tc := range []struct {
		name        string
		unresolved  bool
		wantRemoved bool
	}{
		{"every allocatable VF resolved", false, true},
		{"a VF without representor", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarnessWith(t, func(h *harness) {
				h.createNAD(sriovNAD(fcNS, "net", "accelerated-bridge"))
				for _, dev := range []string{"old-rep", "left-bridge", "uplink0"} {
					h.tc.AddDevice(dev)
				}
				for _, dev := range []string{"old-rep", "left-bridge"} {
					h.must(h.tc.Apply(hctx(), dev, isolated), "left by the last run")
				}
				h.must(h.tc.AddForeign("left-bridge", foreign), "another tool's filter")
				h.must(h.tc.AddForeign("uplink0", foreign), "another tool's filter")
				if tc.unresolved {
					h.sw.RemoveRepresentor(hVF(3))
				}
			})
			for _, dev := range []string{"old-rep", "left-bridge"} {
				if got, want := h.ours(dev) == 0, tc.wantRemoved; got != want {
					t.Errorf("%s: our filters removed = %v, want %v", dev, got, want)
				}
			}
			for _, dev := range []string{"left-bridge", "uplink0"} {
				if st, _ := h.tc.Dump(hctx(), dev); len(st.Filters)-len(st.Ours()) != 1 {
					t.Errorf("%s: another tool's filter touched: %s", dev, st.Canonical())
				}
			}
			if h.ours(hRep(1)) == 0 {
				t.Errorf("free VF %s is not closed", hRep(1))
			}
			var m dto.Metric
			h.must(h.agent.metrics.orphansCleaned.Write(&m), "read metric")
			want := 0.0
			if tc.wantRemoved {
				want = 2
			}
			if got := m.GetCounter().GetValue(); got != want {
				t.Errorf("orphans_cleaned_total = %v, want %v", got, want)
			}
		})
	}
}

// TestRestartWithBadInput: an agent that starts while a NAD's config does
// not parse knows no last good rules for the pods on it. A representor
// programmed alone keeps the filters of ours the last run left; one on a
// bridge is isolated both ways, since the agent cannot read a bridge
// section back into a rule set and every other port must carry the
// pod's ingress section (stricter than the last run, never more open). A
// representor without rules of ours is isolated either way.
func TestRestartWithBadInput(t *testing.T) {
	for _, tc := range []struct {
		name    string
		bridged bool
	}{{"programmed alone", false}, {"on a bridge", true}} {
		t.Run(tc.name, func(t *testing.T) {
			lastRun := &policy.RuleSet{Ingress: policy.DirectionRules{Isolated: true, Stateful: true}}
			var before string
			h := newHarnessWith(t, func(h *harness) {
				if !tc.bridged {
					for i := range hVFs {
						h.sw.SetMaster(hRep(i), "")
					}
				}
				bad := sriovNAD(fcNS, "net", "accelerated-bridge")
				bad.Spec.Config = "{"
				h.createNAD(bad)
				h.pr.set(fcNS, "db", hVF(0))
				h.pr.set(fcNS, "web", hVF(1))
				h.createPod(runningPod(fcNS, "db", fcNet, fcPodIP, nil))
				h.createPod(runningPod(fcNS, "web", fcNet, "10.1.0.11", nil))
				h.must(h.tc.Apply(hctx(), hRep(0), lastRun), "db's rules from the last run")
				st, err := h.tc.Dump(hctx(), hRep(0))
				h.must(err, "dump")
				before = st.Canonical()
			})
			h.settle()
			st, _ := h.tc.Dump(hctx(), hRep(0))
			if kept := st.Canonical() == before; kept == tc.bridged {
				t.Errorf("%s: the last run's rules kept = %v, want %v:\n%s\nlast run:\n%s", hRep(0), kept, !tc.bridged, st.Canonical(), before)
			}
			if got := h.allowed(hRep(0), fcPodIP); tc.bridged && len(got) != 0 {
				t.Errorf("%s on a bridge allows %v, want isolated both ways", hRep(0), got)
			}
			if got := h.allowed(hRep(1), "10.1.0.11"); len(got) != 0 || h.ours(hRep(1)) == 0 {
				t.Errorf("%s (no rules of the last run) allows %v, want isolated both ways", hRep(1), got)
			}
			for _, a := range h.agent.Attachments() {
				if a.State != stateHeld {
					t.Errorf("%s is %s, want held", a.ID, a.State)
				}
			}
		})
	}
}

// TestTightenedPolicyCutsConnections: once a stricter rule set is
// programmed, the pod's established connections it denies are cut; those
// it allows, other zones' and other pods' stay.
func TestTightenedPolicyCutsConnections(t *testing.T) {
	h := newHarness(t)
	h.createNAD(sriovNAD(fcNS, "net", "accelerated-bridge"))
	h.pr.set(fcNS, "db", hVF(0))
	h.createPod(runningPod(fcNS, "db", fcNet, fcPodIP, nil))
	h.eventually("db programmed", func() bool {
		st := h.agent.Attachments()
		return len(st) == 1 && st[0].State == stateProgrammed
	})
	pod, peer, other := netip.MustParseAddr(fcPodIP), netip.MustParseAddr("10.1.0.20"), netip.MustParseAddr("10.1.0.99")
	flows := []tcdriver.Flow{
		{Zone: tcdriver.DefaultZone, Proto: tcdriver.ProtoTCP, Src: peer, Dst: pod, SrcPort: 40000, DstPort: 5432}, // into db: denied next
		{Zone: tcdriver.DefaultZone, Proto: tcdriver.ProtoUDP, Src: pod, Dst: peer, SrcPort: 40001, DstPort: 53},   // db's egress: not isolated
		{Zone: 7, Proto: tcdriver.ProtoTCP, Src: peer, Dst: pod, SrcPort: 40002, DstPort: 5432},                    // another zone
		{Zone: tcdriver.DefaultZone, Proto: tcdriver.ProtoTCP, Src: peer, Dst: other, SrcPort: 40003, DstPort: 80}, // another pod
	}
	for _, f := range flows {
		h.ct.add(f)
	}
	_, err := h.clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(fcNS).Create(hctx(), denyAllIngress(fcNS, "deny", fcNet), metav1.CreateOptions{})
	h.must(err, "policy")
	h.eventually("the denied connection cut", func() bool { return len(h.ct.list()) == 3 })
	h.settle()
	if got := h.ct.list(); !slices.Equal(got, flows[1:]) {
		t.Errorf("flows left %v, want %v", got, flows[1:])
	}
}

// TestFreeVFsClosedUntilMapped: a VF of an enforced network's resource is
// closed while no pod holds it, stays closed once the kubelet gives it to a
// pod the agent has not mapped yet, and then gets the pod's rules: its
// policy's, or none when the VF is on no enforced network.
func TestFreeVFsClosedUntilMapped(t *testing.T) {
	dpdk := func(ns, name string) *corev1.Pod { // a VF and no network
		p := runningPod(ns, name, "", "", nil)
		delete(p.Annotations, nadv1.NetworkAttachmentAnnot)
		delete(p.Annotations, nadv1.NetworkStatusAnnot)
		p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{hResource: resource.MustParse("1")}
		return p
	}
	tests := []struct {
		name   string
		pod    *corev1.Pod
		policy bool
		ip     string
		// want: the probes the VF allows once the pod is mapped
		want func(before map[string]bool) bool
	}{
		{"no policy: opened", runningPod(fcNS, "web", fcNet, "10.1.0.11", nil), false, "10.1.0.11",
			func(got map[string]bool) bool { return len(got) == 8 }},
		{"deny-all ingress: egress opened only", runningPod(fcNS, "web", fcNet, "10.1.0.11", nil), true, "10.1.0.11",
			func(got map[string]bool) bool { return len(got) == 4 && got["out 10.1.0.20:80"] }},
		{"network of a plugin not enforced: opened", runningPod(fcNS, "web", "shop/mac", "10.1.0.11", nil), false, "10.1.0.11",
			func(got map[string]bool) bool { return len(got) == 8 }},
		{"DPDK pod without network: opened", dpdk(fcNS, "web"), false, "10.1.0.11",
			func(got map[string]bool) bool { return len(got) == 8 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.createNAD(sriovNAD(fcNS, "net", "accelerated-bridge"))
			h.createNAD(sriovNAD(fcNS, "mac", "macvlan"))
			if tt.policy {
				_, err := h.clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(fcNS).Create(hctx(), denyAllIngress(fcNS, "deny", fcNet), metav1.CreateOptions{})
				h.must(err, "policy")
			}
			closed := func() bool { return h.ours(hRep(1)) > 0 && len(h.allowed(hRep(1), tt.ip)) == 0 }
			h.eventually("free VFs closed once an enforced NAD exists", closed)
			// The kubelet allocates the VF; the agent has not seen the pod.
			h.pr.set(fcNS, "web", hVF(1))
			h.must(h.agent.resync(hctx()), "resync")
			if !closed() {
				t.Fatalf("%s opened before its pod was mapped: %v", hRep(1), h.allowed(hRep(1), tt.ip))
			}
			h.createPod(tt.pod)
			h.eventually("the pod's rules", func() bool { return tt.want(h.allowed(hRep(1), tt.ip)) })
			if h.ours(hRep(2)) == 0 || len(h.allowed(hRep(2), tt.ip)) != 0 {
				t.Errorf("the free %s opened", hRep(2))
			}
		})
	}
}
