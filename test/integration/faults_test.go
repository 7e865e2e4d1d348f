package integration

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// scene is one fault's world, in its own namespace: a local server pod on
// its own VF, a remote client, and a policy isolating the server both ways
// that allows TCP 443 from and to the client only.
type scene struct {
	ns, network        string
	vf                 int
	serverIP, clientIP string
	strangerIP         string

	mu  sync.Mutex
	rep string // the server's representor; a fault may rename it
}

func (s *scene) representor() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rep
}

func (c *cluster) newScene(t *testing.T, i int) *scene {
	t.Helper()
	s := &scene{ns: fmt.Sprintf("fault-%d", i), serverIP: fmt.Sprintf("10.60.%d.10", i),
		clientIP: fmt.Sprintf("10.60.%d.20", i), strangerIP: fmt.Sprintf("10.60.%d.99", i)}
	s.network = s.ns + "/net"
	c.createNamespace(s.ns, map[string]string{"team": s.ns})
	c.createNAD(s.ns, "net", "accelerated-bridge")
	c.mu.Lock()
	s.vf = c.nextVF
	c.mu.Unlock()
	s.rep = c.createPod(podSpec{ns: s.ns, name: "server", node: localNode, labels: map[string]string{"app": "server"}, network: s.network, ip: s.serverIP})
	c.createPod(podSpec{ns: s.ns, name: "client", node: remoteNode, labels: map[string]string{"app": "client"}, network: s.network, ip: s.clientIP})
	c.createPolicy(s.policy())
	eventually(t, 20*time.Second, func() (bool, string) {
		got := c.allowed(s)
		return sameSet(got, s.baseline()), fmt.Sprintf("%s allows %v, want %v", s.rep, setString(got), setString(s.baseline()))
	})
	return s
}

// policy isolates the server both ways; TCP 443 from and to the client
// (a pod of a namespace labelled team=<ns>).
func (s *scene) policy() *mnpv1beta1.MultiNetworkPolicy {
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(443)
	peer := []mnpv1beta1.MultiNetworkPolicyPeer{{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": s.ns}},
		PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}},
	}}
	ports := []mnpv1beta1.MultiNetworkPolicyPort{{Protocol: &tcp, Port: &port}}
	return &mnpv1beta1.MultiNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.ns, Name: "server", Annotations: map[string]string{policy.PolicyForAnnotation: s.network}},
		Spec: mnpv1beta1.MultiNetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			PolicyTypes: []mnpv1beta1.MultiPolicyType{mnpv1beta1.PolicyTypeIngress, mnpv1beta1.PolicyTypeEgress},
			Ingress:     []mnpv1beta1.MultiNetworkPolicyIngressRule{{Ports: ports, From: peer}},
			Egress:      []mnpv1beta1.MultiNetworkPolicyEgressRule{{Ports: ports, To: peer}},
		},
	}
}

func (s *scene) baseline() map[string]bool {
	return set("in "+s.clientIP+":443", "out "+s.clientIP+":443")
}

// allowed traces every probe, a new TCP connection from and to the client
// and a stranger on ports 80 and 443, where the bridge placement decides
// it (admits), and returns those that pass.
func (c *cluster) allowed(s *scene) map[string]bool {
	out := map[string]bool{}
	pod := netip.MustParseAddr(s.serverIP)
	rep := s.representor()
	for _, r := range []string{s.clientIP, s.strangerIP} {
		for _, port := range []uint16{80, 443} {
			if c.admits(rep, policy.Packet{Direction: policy.Ingress, Remote: netip.MustParseAddr(r), Protocol: policy.TCP, Port: port}, pod) {
				out[fmt.Sprintf("in %s:%d", r, port)] = true
			}
			if c.admits(rep, policy.Packet{Direction: policy.Egress, Remote: netip.MustParseAddr(r), Protocol: policy.TCP, Port: port}, pod) {
				out[fmt.Sprintf("out %s:%d", r, port)] = true
			}
		}
	}
	return out
}

func set(items ...string) map[string]bool {
	out := map[string]bool{}
	for _, i := range items {
		out[i] = true
	}
	return out
}

func union(sets ...map[string]bool) map[string]bool {
	out := map[string]bool{}
	for _, s := range sets {
		maps.Copy(out, s)
	}
	return out
}

func sameSet(a, b map[string]bool) bool { return len(a) == len(b) && len(union(a, b)) == len(a) }

func setString(s map[string]bool) string {
	return "{" + strings.Join(slices.Sorted(maps.Keys(s)), ", ") + "}"
}

// fault is one bad input or one fault, injected into a programmed scene.
type fault struct {
	name   string
	inject func(t *testing.T, c *cluster, s *scene)
	// seen holds once the agent has met the fault (an Event); seenMetric
	// names an errors_total reason that must rise instead.
	seen       func(c *cluster, s *scene) (bool, string)
	seenMetric string
	// valid is what the current valid input allows, when the case also
	// makes a valid change (nil: nothing beyond the last valid state).
	valid func(s *scene) map[string]bool
	// heal undoes the fault; the scene must then converge on healed (nil:
	// the baseline).
	heal   func(t *testing.T, c *cluster, s *scene)
	healed func(s *scene) map[string]bool
}

// TestFaultsNeverOpen injects every kind of bad input on every object the
// agent reads and every node fault, one per scene, into a running agent
// against the real API server. From the injection on, the set of allowed
// probes, traced through the installed filters every few milliseconds, must
// stay within what the last valid state or the current valid input allows;
// after healing, the scene converges on the valid input again.
func TestFaultsNeverOpen(t *testing.T) {
	c := newCluster(t, clusterOptions{resync: 2 * time.Second})
	c.waitReady()
	for i, f := range faults() {
		t.Run(f.name, func(t *testing.T) {
			s := c.newScene(t, i)
			limit := s.baseline()
			if f.valid != nil {
				limit = union(limit, f.valid(s))
			}
			mon := c.monitor(t, s, limit)
			seen := f.seen
			if f.seenMetric != "" {
				seen = metricGrows(t, c, f.seenMetric)
			}
			healed := f.heal == nil
			defer func() {
				if !healed { // a failed case must not break the next ones
					f.heal(t, c, s)
				}
			}()
			f.inject(t, c, s)
			c.await(t, s, seen, 2500*time.Millisecond) // over a resync
			if f.valid != nil {
				c.await(t, s, converged(f.valid(s)), 0)
			}
			if f.heal != nil {
				want := s.baseline()
				if f.healed != nil {
					want = f.healed(s)
				}
				mon.widen(want)
				healed = true
				f.heal(t, c, s)
				c.await(t, s, converged(want), 0)
			}
			mon.stop()
		})
	}
}

// monitor traces the scene's probes every few milliseconds in the
// background and fails the test on any probe outside its limit.
type monitor struct {
	t     *testing.T
	mu    sync.Mutex
	limit map[string]bool
	done  chan struct{}
	wg    sync.WaitGroup
}

func (c *cluster) monitor(t *testing.T, s *scene, limit map[string]bool) *monitor {
	m := &monitor{t: t, limit: limit, done: make(chan struct{})}
	reported := map[string]bool{}
	m.wg.Go(func() {
		for {
			select {
			case <-m.done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			rep := s.representor()
			got := c.allowed(s)
			m.mu.Lock()
			for p := range got {
				if !m.limit[p] && !reported[p] {
					reported[p] = true
					t.Errorf("%s allows %q, which neither the last valid state nor the current valid input allows (limit %s)", rep, p, setString(m.limit))
				}
			}
			m.mu.Unlock()
		}
	})
	return m
}

// widen adds what a healed input allows.
func (m *monitor) widen(allowed map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.limit = union(m.limit, allowed)
}

func (m *monitor) stop() {
	close(m.done)
	m.wg.Wait()
}

// await waits until cond holds and at least minimum has passed.
func (c *cluster) await(t *testing.T, s *scene, cond func(*cluster, *scene) (bool, string), minimum time.Duration) {
	t.Helper()
	start := time.Now()
	eventually(t, 45*time.Second, func() (bool, string) {
		if cond != nil {
			if ok, why := cond(c, s); !ok {
				return false, why
			}
		}
		return time.Since(start) >= minimum, "waiting"
	})
}

// converged holds once the scene allows exactly want.
func converged(want map[string]bool) func(*cluster, *scene) (bool, string) {
	return func(c *cluster, s *scene) (bool, string) {
		got := c.allowed(s)
		return sameSet(got, want), fmt.Sprintf("%s allows %s, want %s", s.representor(), setString(got), setString(want))
	}
}

// hasEvent is a seen condition: a Warning Event on the object whose reason
// and message match.
func hasEvent(kind, name, reason, substr string) func(*cluster, *scene) (bool, string) {
	return func(c *cluster, s *scene) (bool, string) {
		evs := c.events(s.ns, kind, name)
		for _, e := range evs {
			if e.Type == corev1.EventTypeWarning && e.Reason == reason && strings.Contains(e.Message, substr) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("no %s Event with %q on %s %s/%s: %s", reason, substr, kind, s.ns, name, eventsText(evs))
	}
}

// metricGrows is a seen condition: errors_total{reason} rose past its value
// when the condition was made.
func metricGrows(t *testing.T, c *cluster, reason string) func(*cluster, *scene) (bool, string) {
	base := metricValue(t, c, "multi_networkpolicy_tc_errors_total", reason)
	return func(c *cluster, _ *scene) (bool, string) {
		v := metricValue(t, c, "multi_networkpolicy_tc_errors_total", reason)
		return v > base, fmt.Sprintf("errors_total{reason=%s} = %v, not above %v", reason, v, base)
	}
}

func (c *cluster) updatePolicy(t *testing.T, s *scene, edit func(*mnpv1beta1.MultiNetworkPolicy)) {
	t.Helper()
	api := c.admin.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(s.ns)
	p, err := api.Get(ctx(), "server", metav1.GetOptions{})
	mustf(t, err, "get policy")
	edit(p)
	_, err = api.Update(ctx(), p, metav1.UpdateOptions{})
	mustf(t, err, "update policy")
}

func (c *cluster) updatePod(t *testing.T, s *scene, name string, edit func(*corev1.Pod)) {
	t.Helper()
	api := c.admin.Kube.CoreV1().Pods(s.ns)
	p, err := api.Get(ctx(), name, metav1.GetOptions{})
	mustf(t, err, "get pod")
	edit(p)
	_, err = api.Update(ctx(), p, metav1.UpdateOptions{})
	mustf(t, err, "update pod")
}

func (c *cluster) updateNAD(t *testing.T, s *scene, edit func(*nadv1.NetworkAttachmentDefinition)) {
	t.Helper()
	api := c.admin.NAD.K8sCniCncfIoV1().NetworkAttachmentDefinitions(s.ns)
	n, err := api.Get(ctx(), "net", metav1.GetOptions{})
	mustf(t, err, "get NAD")
	edit(n)
	_, err = api.Update(ctx(), n, metav1.UpdateOptions{})
	mustf(t, err, "update NAD")
}

func (c *cluster) updateNamespace(t *testing.T, s *scene, labels map[string]string) {
	t.Helper()
	api := c.admin.Kube.CoreV1().Namespaces()
	n, err := api.Get(ctx(), s.ns, metav1.GetOptions{})
	mustf(t, err, "get namespace")
	n.Labels = labels
	_, err = api.Update(ctx(), n, metav1.UpdateOptions{})
	mustf(t, err, "update namespace")
}

// setServerDevices makes PodResources list these VFs for the server.
func (c *cluster) setServerDevices(s *scene, vfs ...int) {
	ids := make([]string, len(vfs))
	for i, v := range vfs {
		ids[i] = vfPCI(v)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.podRes[s.ns+"/server"] = &podresourcesv1.PodResources{Namespace: s.ns, Name: "server", Containers: []*podresourcesv1.ContainerResources{{
		Name: "c", Devices: []*podresourcesv1.ContainerDevices{{ResourceName: resource, DeviceIds: ids}},
	}}}
	c.syncPodResourcesLocked()
}

const spareVF = numVFs - 1 // never given to a pod by the suite

func faults() []fault {
	annotation := func(key, value string) func(t *testing.T, c *cluster, s *scene) {
		return func(t *testing.T, c *cluster, s *scene) {
			c.updatePod(t, s, "server", func(p *corev1.Pod) { p.Annotations[key] = value })
		}
	}
	restoreNetworks := func(t *testing.T, c *cluster, s *scene) {
		c.updatePod(t, s, "server", func(p *corev1.Pod) { p.Annotations[nadv1.NetworkAttachmentAnnot] = s.network })
	}
	nadConfig := func(conf string) func(t *testing.T, c *cluster, s *scene) {
		return func(t *testing.T, c *cluster, s *scene) {
			c.updateNAD(t, s, func(n *nadv1.NetworkAttachmentDefinition) { n.Spec.Config = conf })
		}
	}
	goodConfig := nadConfig(`{"cniVersion":"0.4.0","name":"net","type":"accelerated-bridge"}`)
	egressOnly := func(s *scene) map[string]bool { return set("out " + s.clientIP + ":443") }
	ingressOnly := func(s *scene) map[string]bool { return set("in " + s.clientIP + ":443") }
	nothing := func(*scene) map[string]bool { return set() }
	return []fault{
		{
			name: "policy: peer made a malformed ipBlock",
			inject: func(t *testing.T, c *cluster, s *scene) {
				c.updatePolicy(t, s, func(p *mnpv1beta1.MultiNetworkPolicy) {
					p.Spec.Ingress[0].From = []mnpv1beta1.MultiNetworkPolicyPeer{ipBlockPeer("10.60.0.0/33")}
				})
			},
			seen:  hasEvent("MultiNetworkPolicy", "server", "InvalidInput", "10.60.0.0/33"),
			valid: egressOnly,
			heal: func(t *testing.T, c *cluster, s *scene) {
				c.updatePolicy(t, s, func(p *mnpv1beta1.MultiNetworkPolicy) { p.Spec = s.policy().Spec })
			},
		},
		{
			name:   "pod: networks annotation garbled",
			inject: annotation(nadv1.NetworkAttachmentAnnot, `[{"name":`),
			seen:   hasEvent("Pod", "server", "InvalidNetworksAnnotation", "keep the rules they had"),
			heal:   restoreNetworks,
		},
		{
			name:   "pod: networks annotation names another network",
			inject: annotation(nadv1.NetworkAttachmentAnnot, "elsewhere/none"),
			seen:   hasEvent("Pod", "server", "InvalidNetworksAnnotation", "not found"),
			heal:   restoreNetworks,
		},
		{
			name:   "pod: its own network-status garbled",
			inject: annotation(nadv1.NetworkStatusAnnot, `[{"name":`),
			seen:   hasEvent("Pod", "server", "InvalidInput", nadv1.NetworkStatusAnnot),
			heal: func(t *testing.T, c *cluster, s *scene) {
				c.updatePod(t, s, "server", func(p *corev1.Pod) {
					p.Annotations[nadv1.NetworkStatusAnnot] = fmt.Sprintf(`[{"name":%q,"interface":"net1","ips":[%q]}]`, s.network, s.serverIP)
				})
			},
		},
		{
			name: "peer pod: network-status garbled",
			inject: func(t *testing.T, c *cluster, s *scene) {
				c.updatePod(t, s, "client", func(p *corev1.Pod) { p.Annotations[nadv1.NetworkStatusAnnot] = "{" })
			},
			valid: nothing, // the client has no address any more: nothing reaches it
			heal: func(t *testing.T, c *cluster, s *scene) {
				c.updatePod(t, s, "client", func(p *corev1.Pod) {
					p.Annotations[nadv1.NetworkStatusAnnot] = fmt.Sprintf(`[{"name":%q,"interface":"net1","ips":[%q]}]`, s.network, s.clientIP)
				})
			},
		},
		{
			name:   "NAD: spec.config invalid JSON",
			inject: nadConfig(`{"type":`),
			seen:   hasEvent("NetworkAttachmentDefinition", "net", "InvalidInput", "does not parse"),
			heal:   goodConfig,
		},
		{
			name:   "NAD: plugin type not in --network-plugins",
			inject: nadConfig(`{"cniVersion":"0.4.0","name":"net","type":"macvlan"}`),
			seen:   hasEvent("NetworkAttachmentDefinition", "net", "InvalidInput", "--network-plugins"),
			heal:   goodConfig,
		},
		{
			name: "NAD: resourceName annotation removed",
			inject: func(t *testing.T, c *cluster, s *scene) {
				c.updateNAD(t, s, func(n *nadv1.NetworkAttachmentDefinition) { delete(n.Annotations, podresources.ResourceNameAnnotation) })
			},
			seen: hasEvent("NetworkAttachmentDefinition", "net", "InvalidInput", podresources.ResourceNameAnnotation),
			heal: func(t *testing.T, c *cluster, s *scene) {
				c.updateNAD(t, s, func(n *nadv1.NetworkAttachmentDefinition) {
					n.Annotations = map[string]string{podresources.ResourceNameAnnotation: resource}
				})
			},
		},
		{
			name: "NAD: deleted",
			inject: func(t *testing.T, c *cluster, s *scene) {
				mustf(t, c.admin.NAD.K8sCniCncfIoV1().NetworkAttachmentDefinitions(s.ns).Delete(ctx(), "net", metav1.DeleteOptions{}), "delete NAD")
			},
			seen: hasEvent("Pod", "server", "InvalidNetworksAnnotation", "not found"),
			heal: func(t *testing.T, c *cluster, s *scene) { c.createNAD(s.ns, "net", "accelerated-bridge") },
		},
		{
			name:   "namespace: labels the peer selector needs removed",
			inject: func(t *testing.T, c *cluster, s *scene) { c.updateNamespace(t, s, nil) },
			valid:  nothing,
			heal:   func(t *testing.T, c *cluster, s *scene) { c.updateNamespace(t, s, map[string]string{"team": s.ns}) },
		},
		{
			name:       "PodResources: socket gone",
			inject:     func(_ *testing.T, c *cluster, _ *scene) { c.stopPodResources() },
			seenMetric: "PodResourcesFailed",
			heal:       func(_ *testing.T, c *cluster, _ *scene) { c.startPodResources() },
		},
		{
			name:       "PodResources: slower than the call timeout",
			inject:     func(_ *testing.T, c *cluster, _ *scene) { c.prs.SetDelay(6 * time.Second) },
			seenMetric: "PodResourcesFailed",
			heal:       func(_ *testing.T, c *cluster, _ *scene) { c.prs.SetDelay(0) },
		},
		{
			name:   "PodResources: more devices than networks",
			inject: func(_ *testing.T, c *cluster, s *scene) { c.setServerDevices(s, s.vf, spareVF) },
			seen:   hasEvent("Pod", "server", "DeviceCountMismatch", resource),
			heal:   func(_ *testing.T, c *cluster, s *scene) { c.setServerDevices(s, s.vf) },
		},
		{
			name:   "representor missing",
			inject: func(_ *testing.T, c *cluster, s *scene) { c.resolver.removeRepresentor(vfPCI(s.vf)) },
			seen:   hasEvent("Pod", "server", "RepresentorNotFound", "VF "),
			heal:   func(_ *testing.T, c *cluster, s *scene) { c.resolver.addVF(s.vf) },
		},
		{
			name: "representor renamed",
			inject: func(_ *testing.T, c *cluster, s *scene) {
				renamed := "renamed" + itoa(s.vf)
				s.mu.Lock()
				c.tc.RenameDevice(s.rep, renamed)
				c.resolver.renameRepresentor(s.vf, renamed)
				s.rep = renamed
				s.mu.Unlock()
			},
			seen: func(c *cluster, s *scene) (bool, string) {
				for _, a := range c.agent.Attachments() {
					if strings.HasPrefix(a.ID, s.ns+"/server/") && slices.Equal(a.Representors, []string{s.representor()}) && a.State == "programmed" {
						return true, ""
					}
				}
				return false, fmt.Sprintf("attachment not programmed on %s: %+v", s.representor(), c.agent.Attachments())
			},
		},
		{
			name: "kernel refuses a filter during a tightening change",
			inject: func(t *testing.T, c *cluster, s *scene) {
				c.tc.FailAfter(0)
				c.updatePolicy(t, s, func(p *mnpv1beta1.MultiNetworkPolicy) { p.Spec.Egress = nil })
			},
			seen:  hasEvent("Pod", "server", "TCProgrammingFailed", "busy"),
			valid: ingressOnly,
		},
		{
			name: "agent restarted in the middle of an apply",
			inject: func(t *testing.T, c *cluster, s *scene) {
				c.tc.FailAfter(1) // the first write lands, the second fails
				c.updatePolicy(t, s, func(p *mnpv1beta1.MultiNetworkPolicy) { p.Spec.Egress = nil })
				// Restart once the failed apply was reported (or, when the
				// change took a single write, once it landed).
				failed, landed := hasEvent("Pod", "server", "TCProgrammingFailed", "busy"), converged(ingressOnly(s))
				eventually(t, 20*time.Second, func() (bool, string) {
					if ok, _ := failed(c, s); ok {
						return true, ""
					}
					return landed(c, s)
				})
				c.stopAgent()
				c.startAgent()
				c.waitReady()
			},
			valid: ingressOnly,
		},
		{
			name:   "API server outage",
			inject: func(_ *testing.T, c *cluster, _ *scene) { c.env.StopAPIServer() },
			heal: func(t *testing.T, c *cluster, s *scene) {
				mustf(t, c.env.StartAPIServer(ctx()), "restarting kube-apiserver")
				// a change after the outage reaches the kernel
				c.updatePolicy(t, s, func(p *mnpv1beta1.MultiNetworkPolicy) { p.Spec.Egress = nil })
			},
			healed: ingressOnly,
		},
	}
}

// TestOrphansCleanedAtRestart: a pod deleted while the agent is down leaves
// its rules on a VF no pod holds; the new agent replaces them with a free
// VF's at start (closed both ways) and counts them.
func TestOrphansCleanedAtRestart(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	c.waitReady()
	s := c.newScene(t, 0)
	c.stopAgent()
	c.deletePod(s.ns, "server")
	if c.ourFilters(s.rep) == 0 {
		t.Fatal("the stopped agent's rules are gone already")
	}
	c.startAgent()
	c.waitReady()
	if got := c.allowed(s); len(got) != 0 {
		t.Errorf("%s, whose pod is gone, allows %s; want it closed", s.rep, setString(got))
	}
	if got := metricValue(t, c, "multi_networkpolicy_tc_orphans_cleaned_total", ""); got != 1 {
		t.Errorf("orphans_cleaned_total = %v, want 1", got)
	}
}
