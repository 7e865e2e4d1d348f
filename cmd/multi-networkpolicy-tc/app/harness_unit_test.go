package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	mnpfake "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/client/clientset/versioned/fake"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	nadfake "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/client/clientset/versioned/fake"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// The unit harness runs a whole Agent over client-go's fake clientsets, an
// in-memory PodResources, sriov.Fake and tcdriver.Fake. The integration
// suite (test/integration) runs the same state machine against a real
// kube-apiserver and a real PodResources gRPC server.

const (
	hNode     = "node-a"
	hPF       = "0000:3b:00.0"
	hResource = "nvidia.com/cx6dx_vfs"
	hVFs      = 4
)

// TestMain turns off client-go's watch-list: the CRD clientsets' generated
// fakes predate it and never send the initial-events bookmark.
func TestMain(m *testing.M) {
	_ = os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	os.Exit(m.Run())
}

const (
	hBridge = "br0"
	hUplink = "p0"
)

func hVF(i int) string  { return fmt.Sprintf("0000:3b:00.%d", i+2) }
func hRep(i int) string { return fmt.Sprintf("pf0vf%d", i) }

// hMAC is VF i's MAC, as its PF reports it.
func hMAC(i int) net.HardwareAddr { return net.HardwareAddr{0x02, 0, 0, 0, 0, byte(i + 1)} }

// hRepIndex is i of representor pf0vfI.
func hRepIndex(rep string) int {
	var i int
	_, _ = fmt.Sscanf(rep, "pf0vf%d", &i)
	return i
}

// fakePodResources keeps what the kubelet would report and fails like the
// gRPC client does: ErrPodNotFound for an unknown pod, an error when down.
type fakePodResources struct {
	mu   sync.Mutex
	pods map[string]*podresourcesv1.PodResources
	down error
}

func (f *fakePodResources) List(context.Context) ([]*podresourcesv1.PodResources, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down != nil {
		return nil, f.down
	}
	out := make([]*podresourcesv1.PodResources, 0, len(f.pods))
	for _, p := range f.pods {
		out = append(out, p)
	}
	return out, nil
}

func (f *fakePodResources) Get(_ context.Context, ns, name string) (*podresourcesv1.PodResources, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down != nil {
		return nil, f.down
	}
	p := f.pods[ns+"/"+name]
	if p == nil {
		return nil, fmt.Errorf("pod %s/%s: %w", ns, name, podresources.ErrPodNotFound)
	}
	return p, nil
}

// GetAllocatableResources reports every VF of the switch.
func (f *fakePodResources) GetAllocatableResources(context.Context) (*podresourcesv1.AllocatableResourcesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down != nil {
		return nil, f.down
	}
	ids := make([]string, hVFs)
	for i := range hVFs {
		ids[i] = hVF(i)
	}
	return &podresourcesv1.AllocatableResourcesResponse{Devices: []*podresourcesv1.ContainerDevices{{ResourceName: hResource, DeviceIds: ids}}}, nil
}

func (f *fakePodResources) set(ns, name string, vfs ...string) {
	f.setResource(ns, name, hResource, vfs...)
}

// setResource makes the kubelet list these devices of resource for the pod
// (none: the pod is not listed).
func (f *fakePodResources) setResource(ns, name, resource string, ids ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ids == nil {
		delete(f.pods, ns+"/"+name)
		return
	}
	f.pods[ns+"/"+name] = &podresourcesv1.PodResources{Namespace: ns, Name: name, Containers: []*podresourcesv1.ContainerResources{{
		Name: "c", Devices: []*podresourcesv1.ContainerDevices{{ResourceName: resource, DeviceIds: ids}},
	}}}
}

// fakeConntrack is a conntrack table: Cut removes the flows of the zone a
// rule set denies, as NetlinkConntrack does through ctnetlink.
type fakeConntrack struct {
	mu    sync.Mutex
	flows []tcdriver.Flow
}

func (f *fakeConntrack) Cut(_ context.Context, podIPs []netip.Addr, rs *policy.RuleSet) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	before := len(f.flows)
	f.flows = slices.DeleteFunc(f.flows, func(fl tcdriver.Flow) bool { return fl.Denied(tcdriver.DefaultZone, podIPs, rs) })
	return before - len(f.flows), nil
}

func (f *fakeConntrack) add(fl tcdriver.Flow) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flows = append(f.flows, fl)
}

func (f *fakeConntrack) list() []tcdriver.Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.flows)
}

type harness struct {
	t       *testing.T
	ct      *fakeConntrack
	clients *Clients
	pr      *fakePodResources
	sw      *sriov.Fake
	tc      *tcdriver.Fake
	agent   *Agent
	cancel  context.CancelFunc
	done    chan error
}

func newHarness(t *testing.T) *harness { return newHarnessWith(t, nil) }

// newHarnessWith runs before (creating objects, breaking the node) before
// the agent starts.
func newHarnessWith(t *testing.T, before func(*harness)) *harness {
	t.Helper()
	return newHarnessTC(t, tcdriver.Options{}, before)
}

// newHarnessTC is newHarnessWith with the driver's options (the agent's
// --tc-offload and --offload-profile follow them).
func newHarnessTC(t *testing.T, tcOpts tcdriver.Options, before func(*harness)) *harness {
	t.Helper()
	h := &harness{
		t:       t,
		clients: &Clients{Kube: kubefake.NewClientset(), MNP: mnpfake.NewSimpleClientset(), NAD: nadfake.NewSimpleClientset()},
		pr:      &fakePodResources{pods: map[string]*podresourcesv1.PodResources{}},
		ct:      &fakeConntrack{},
	}
	// accelerated-bridge-cni's node: the uplink and every VF
	// representor are ports of one bridge, each VF has a MAC set on its
	// PF, so the agent enforces the bridge placement.
	sw := sriov.NewFake().AddPF(hPF, hUplink, true).SetMaster(hUplink, hBridge)
	devs := []string{hUplink}
	for i := range hVFs {
		sw.AddVF(hPF, i, hVF(i), hRep(i)).SetMaster(hRep(i), hBridge).SetVFMAC(hVF(i), hMAC(i))
		devs = append(devs, hRep(i))
	}
	h.sw = sw
	h.tc = tcdriver.NewFake(tcOpts, devs...)
	opts := *NewAgentOptions()
	if tcOpts.Offload != "" {
		opts.TCOffload = string(tcOpts.Offload)
	}
	if tcOpts.Profile.Name != "" {
		opts.OffloadProfile = tcOpts.Profile.Name
	}
	opts.HostnameOverride = hNode
	opts.MetricsBindAddress, opts.HealthProbeBindAddress = "0", "0"
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	agent, err := NewAgent(AgentConfig{Options: opts, Clients: h.clients, PodResources: h.pr, Resolver: sw, Topology: sw, Driver: h.tc, Conntrack: h.ct, Log: log,
		Links: func() ([]string, error) { return h.tc.Devices(), nil }})
	if err != nil {
		t.Fatal(err)
	}
	h.agent = agent
	if before != nil {
		before(h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- agent.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-h.done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	h.eventually("agent ready", func() bool { return agent.Ready() })
	return h
}

func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("not converged: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *harness) settle() {
	// Let queued work land: both queues empty and no item in flight.
	h.t.Helper()
	h.eventually("queues drained", func() bool {
		return h.agent.attQueue.Len() == 0 && h.agent.podQueue.Len() == 0
	})
	time.Sleep(50 * time.Millisecond)
	h.eventually("queues drained", func() bool {
		return h.agent.attQueue.Len() == 0 && h.agent.podQueue.Len() == 0
	})
}

func hctx() context.Context { return context.Background() }

func (h *harness) must(err error, what string) {
	h.t.Helper()
	if err != nil {
		h.t.Fatalf("%s: %v", what, err)
	}
}

func sriovNAD(ns, name, typ string) *nadv1.NetworkAttachmentDefinition {
	return &nadv1.NetworkAttachmentDefinition{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{podresources.ResourceNameAnnotation: hResource}},
		Spec:       nadv1.NetworkAttachmentDefinitionSpec{Config: fmt.Sprintf(`{"cniVersion":"0.4.0","name":%q,"type":%q}`, name, typ)},
	}
}

// runningPod is a pod as multus leaves it, running on this node.
func runningPod(ns, name, network, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name), Labels: labels, Annotations: map[string]string{
			nadv1.NetworkAttachmentAnnot: network,
			nadv1.NetworkStatusAnnot:     fmt.Sprintf(`[{"name":%q,"interface":"net1","ips":[%q]}]`, network, ip),
		}},
		Spec:   corev1.PodSpec{NodeName: hNode, Containers: []corev1.Container{{Name: "c"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
}

func denyAllIngress(ns, name, network string) *mnpv1beta1.MultiNetworkPolicy {
	return &mnpv1beta1.MultiNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{policy.PolicyForAnnotation: network}},
		Spec:       mnpv1beta1.MultiNetworkPolicySpec{PolicyTypes: []mnpv1beta1.MultiPolicyType{mnpv1beta1.PolicyTypeIngress}},
	}
}

// probes are the packets whose verdicts the fail-closed tests compare:
// a TCP connection to and from the pod on each of a few ports and peers.
var probeRemotes = []string{"10.1.0.20", "192.0.2.7"}

// allowed traces every probe where the bridge placement decides it — a
// new connection to the pod entering by the uplink (the rest of the
// network), one from the pod entering by its own representor — and
// returns the set of those that pass ("in 10.1.0.20:80", "out
// 192.0.2.7:443"…).
func (h *harness) allowed(rep, podIP string) map[string]bool {
	out := map[string]bool{}
	pod := netip.MustParseAddr(podIP)
	mac, _ := tcdriver.MACOf(hMAC(hRepIndex(rep)))
	pass := func(dev string, pp policy.Packet) bool {
		fr := tcdriver.FrameFor(pp, pod, 40000)
		ct := tcdriver.NewConntrack()
		if pp.Direction == policy.Egress {
			fr.DstMAC = tcdriver.MAC{0x02, 0xee, 0, 0, 0, 1} // beyond the uplink
			return tcdriver.Trace(h.tc.Filters(dev, tcdriver.HookIngress), tcdriver.HookIngress, fr, ct).Verdict == tcdriver.Pass
		}
		fr.DstMAC = mac
		if tcdriver.Trace(h.tc.Filters(dev, tcdriver.HookIngress), tcdriver.HookIngress, fr, ct).Verdict != tcdriver.Pass {
			return false
		}
		// Then out by the pod's representor: its egress hook is empty in
		// the bridge placement, and holds the ingress rules of a port
		// programmed alone (a free VF, one closed for its MAC), which
		// the frame meets since a VF that sent nothing is not learned.
		return tcdriver.Trace(h.tc.Filters(rep, tcdriver.HookEgress), tcdriver.HookEgress, fr, ct).Verdict == tcdriver.Pass
	}
	for _, r := range probeRemotes {
		for _, port := range []uint16{80, 443} {
			if pass(hUplink, policy.Packet{Direction: policy.Ingress, Remote: netip.MustParseAddr(r), Protocol: policy.TCP, Port: port}) {
				out[fmt.Sprintf("in %s:%d", r, port)] = true
			}
			if pass(rep, policy.Packet{Direction: policy.Egress, Remote: netip.MustParseAddr(r), Protocol: policy.TCP, Port: port}) {
				out[fmt.Sprintf("out %s:%d", r, port)] = true
			}
		}
	}
	return out
}

func (h *harness) ours(rep string) int {
	st, err := h.tc.Dump(hctx(), rep)
	h.must(err, "dump "+rep)
	return len(st.Ours())
}
