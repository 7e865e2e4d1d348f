package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/utils/ptr"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/cmd/multi-networkpolicy-tc/app"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/kubeletsim"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/sandbox"
)

const (
	localNode  = "node-a"
	remoteNode = "node-b"
	pfPCI      = "0000:3b:00.0"
	resource   = "nvidia.com/cx6dx_vfs"
	numVFs     = 32
)

// The node is accelerated-bridge-cni's: the PF's uplink representor and
// every VF representor are ports of one Linux bridge, and the PF reports
// a MAC for each VF, so the agent enforces the bridge placement.
const (
	bridge = "br0"
	uplink = "p0"
)

// vfPCI is VF i of the PF at 0000:3b:00.0: functions 00.2 to 00.7, then 01.0…
func vfPCI(i int) string   { return fmt.Sprintf("0000:3b:%02x.%d", (i+2)/8, (i+2)%8) }
func repName(i int) string { return fmt.Sprintf("pf0vf%d", i) }

// vfMAC is VF i's MAC as its PF reports it.
func vfMAC(i int) net.HardwareAddr { return net.HardwareAddr{0x02, 0, 0, 0, 0, byte(i + 1)} }

// lockedResolver makes sriov.Fake safe to change while the agent resolves.
type lockedResolver struct {
	mu sync.Mutex
	f  *sriov.Fake
}

func (r *lockedResolver) Resolve(vf string) (sriov.VF, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f.Resolve(vf)
}

func (r *lockedResolver) removeRepresentor(vf string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.f.RemoveRepresentor(vf)
}

// renameRepresentor makes VF i's representor netdev appear under name
// (still a port of its bridge: a rename keeps the master).
func (r *lockedResolver) renameRepresentor(i int, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if vf, err := r.f.Resolve(vfPCI(i)); err == nil {
		if br, _ := r.f.BridgeOf(vf.Representor); br != "" {
			r.f.SetMaster(vf.Representor, "").SetMaster(name, br)
		}
	}
	r.f.AddVF(pfPCI, i, vfPCI(i), name)
}

// macOf is the MAC of the VF whose representor is rep.
func (r *lockedResolver) macOf(rep string) tcdriver.MAC {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range numVFs {
		if vf, err := r.f.Resolve(vfPCI(i)); err == nil && vf.Representor == rep {
			m, _ := tcdriver.MACOf(vfMAC(i))
			return m
		}
	}
	for i := range numVFs { // its representor is gone: by its usual name
		if repName(i) == rep {
			m, _ := tcdriver.MACOf(vfMAC(i))
			return m
		}
	}
	return tcdriver.MAC{}
}

// addVF makes VF i's representor (re)appear.
func (r *lockedResolver) addVF(i int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.f.AddVF(pfPCI, i, vfPCI(i), repName(i))
}

// countingDriver counts the driver calls per representor, to show that a
// change reaches only the attachments it affects. The Fake underneath keeps
// the TC state.
type countingDriver struct {
	tcdriver.Driver
	mu      sync.Mutex
	applies map[string]int
	removes map[string]int
	// bridgeApplies counts ApplyBridge per bridge.
	bridgeApplies map[string]int
}

func (d *countingDriver) Apply(ctx context.Context, dev string, rs *policy.RuleSet) error {
	d.mu.Lock()
	d.applies[dev]++
	d.mu.Unlock()
	return d.Driver.Apply(ctx, dev, rs)
}

func (d *countingDriver) ApplyBridge(ctx context.Context, b *tcdriver.Bridge) error {
	d.mu.Lock()
	d.bridgeApplies[b.Name]++
	d.mu.Unlock()
	return d.Driver.ApplyBridge(ctx, b)
}

func (d *countingDriver) bridgeCount(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bridgeApplies[name]
}

func (d *countingDriver) Remove(ctx context.Context, dev string) error {
	d.mu.Lock()
	d.removes[dev]++
	d.mu.Unlock()
	return d.Driver.Remove(ctx, dev)
}

func (d *countingDriver) counts() (applies, removes map[string]int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	applies, removes = map[string]int{}, map[string]int{}
	for k, v := range d.applies {
		applies[k] = v
	}
	for k, v := range d.removes {
		removes[k] = v
	}
	return applies, removes
}

// startKube starts etcd and kube-apiserver (test/sandbox's Kube) on
// 127.0.0.1 from the binaries in KUBE_ASSETS, built by hack/kube/build.sh.
// Both are stopped when the test ends.
func startKube(t testing.TB) *sandbox.Kube {
	t.Helper()
	assets := os.Getenv("KUBE_ASSETS")
	if assets == "" {
		t.Skip("KUBE_ASSETS is not set: run `make test-integration`, which builds kube-apiserver and etcd (hack/kube/build.sh) and sets it")
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			t.Fatalf("KUBE_ASSETS=%s: %v", assets, err)
		}
	}
	k, err := sandbox.StartKube(context.Background(), t.TempDir(), assets, "127.0.0.1")
	mustf(t, err, "starting etcd and kube-apiserver")
	t.Cleanup(k.Stop)
	return k
}

// repoRoot is the module root, two levels up from this package.
func repoRoot(t testing.TB) string {
	t.Helper()
	abs, err := filepath.Abs(filepath.Join("..", ".."))
	mustf(t, err, "module root")
	return abs
}

// cluster is one API server with deploy/ installed, a node's PodResources
// server, SR-IOV switch and TC state, and the agent running in-process as
// the DaemonSet's ServiceAccount.
type cluster struct {
	t        testing.TB
	env      *sandbox.Kube
	admin    *app.Clients
	prs      *kubeletsim.PodResources
	stopPR   func()
	prSocket string
	resolver *lockedResolver
	tc       *tcdriver.Fake
	driver   *countingDriver
	agent    *app.Agent
	registry *prometheus.Registry
	cancel   context.CancelFunc
	done     chan error
	opts     app.AgentOptions

	agentClients *app.Clients
	logLevel     logrus.Level

	mu     sync.Mutex
	podRes map[string]*podresourcesv1.PodResources
	nextVF int
}

type clusterOptions struct {
	resync       time.Duration
	podRulesPath string
	logLevel     logrus.Level
}

func newCluster(t testing.TB, o clusterOptions) *cluster {
	t.Helper()
	env := startKube(t)
	_, err := env.InstallDeploy(context.Background(), repoRoot(t))
	mustf(t, err, "installing deploy/")
	adminClients, err := app.ClientsForConfig(env.Admin())
	mustf(t, err, "admin clients")

	c := &cluster{t: t, env: env, admin: adminClients, podRes: map[string]*podresourcesv1.PodResources{}}
	c.prs = kubeletsim.NewPodResources()
	allocatable := make([]string, numVFs)
	for i := range numVFs {
		allocatable[i] = vfPCI(i)
	}
	c.prs.SetAllocatable(&podresourcesv1.ContainerDevices{ResourceName: resource, DeviceIds: allocatable})
	socket := filepath.Join(t.TempDir(), "kubelet.sock")
	c.prSocket = socket
	c.startPodResources()
	t.Cleanup(c.stopPodResources)

	fake := sriov.NewFake().AddPF(pfPCI, uplink, true).SetMaster(uplink, bridge)
	devs := []string{uplink}
	for i := range numVFs {
		fake.AddVF(pfPCI, i, vfPCI(i), repName(i)).SetMaster(repName(i), bridge).SetVFMAC(vfPCI(i), vfMAC(i))
		devs = append(devs, repName(i))
	}
	c.resolver = &lockedResolver{f: fake}
	c.tc = tcdriver.NewFake(tcdriver.Options{}, devs...)
	c.driver = &countingDriver{Driver: c.tc, applies: map[string]int{}, removes: map[string]int{}, bridgeApplies: map[string]int{}}

	// The agent authenticates with a real token of the DaemonSet's
	// ServiceAccount: RBAC missing from deploy.yml fails the test.
	tok, err := adminClients.Kube.CoreV1().ServiceAccounts(sandbox.AgentNamespace).CreateToken(context.Background(), sandbox.AgentServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	mustf(t, err, "token for the agent's ServiceAccount")
	agentClients, err := app.ClientsForConfig(env.TokenConfig(tok.Status.Token))
	mustf(t, err, "agent clients")

	opts := *app.NewAgentOptions()
	opts.HostnameOverride = localNode
	opts.PodResourcesSocket = socket
	opts.MetricsBindAddress = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	opts.HealthProbeBindAddress = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	opts.ResyncPeriod = 5 * time.Minute
	if o.resync > 0 {
		opts.ResyncPeriod = o.resync
	}
	opts.PodRulesPath = o.podRulesPath
	c.opts = opts
	c.logLevel = logrus.WarnLevel
	if o.logLevel != 0 {
		c.logLevel = o.logLevel
	}
	c.agentClients = agentClients
	c.startAgent()
	t.Cleanup(c.stopAgent)
	return c
}

// startPodResources serves PodResources on the node's socket (again).
func (c *cluster) startPodResources() {
	stop, err := c.prs.Serve(c.prSocket)
	mustf(c.t, err, "PodResources server")
	c.stopPR = stop
}

// stopPodResources stops the server and removes its socket, as a kubelet
// going down does.
func (c *cluster) stopPodResources() {
	if c.stopPR != nil {
		c.stopPR()
		c.stopPR = nil
	}
}

// startAgent starts a new agent process-equivalent: fresh caches, engine
// and metrics, over the same node (PodResources, switch, TC state).
func (c *cluster) startAgent() {
	t := c.t
	log := logrus.New()
	log.SetLevel(c.logLevel)
	c.registry = prometheus.NewRegistry()
	agent, err := app.NewAgent(app.AgentConfig{
		Options:      c.opts,
		Clients:      c.agentClients,
		PodResources: podResourcesClient(t, c.opts.PodResourcesSocket),
		Resolver:     c.resolver,
		Topology:     c.resolver.f, // sriov.Fake is safe for concurrent use
		Driver:       c.driver,
		Registry:     c.registry,
		Log:          log,
	})
	mustf(t, err, "NewAgent")
	c.agent = agent
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel, c.done = cancel, make(chan error, 1)
	go func() { c.done <- agent.Run(ctx) }()
}

func (c *cluster) stopAgent() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	c.cancel = nil
	select {
	case err := <-c.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			c.t.Errorf("agent.Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		c.t.Errorf("agent did not stop within 30s")
	}
}

func (c *cluster) waitReady() {
	c.t.Helper()
	eventually(c.t, 60*time.Second, func() (bool, string) {
		return c.agent.Ready(), "agent not ready"
	})
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var why string
	for {
		var ok bool
		if ok, why = cond(); ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not converged after %s: %s", timeout, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ctx() context.Context { return context.Background() }

func (c *cluster) createNamespace(name string, labels map[string]string) {
	c.t.Helper()
	_, err := c.admin.Kube.CoreV1().Namespaces().Create(ctx(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	mustf(c.t, err, "namespace %s", name)
}

// createNAD creates an SR-IOV network of plugin type typ on the test's
// device plugin resource.
func (c *cluster) createNAD(ns, name, typ string) {
	c.t.Helper()
	nad := &nadv1.NetworkAttachmentDefinition{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{"k8s.v1.cni.cncf.io/resourceName": resource}},
		Spec:       nadv1.NetworkAttachmentDefinitionSpec{Config: fmt.Sprintf(`{"cniVersion":"0.4.0","name":%q,"type":%q}`, name, typ)},
	}
	_, err := c.admin.NAD.K8sCniCncfIoV1().NetworkAttachmentDefinitions(ns).Create(ctx(), nad, metav1.CreateOptions{})
	mustf(c.t, err, "NAD %s/%s", ns, name)
}

type podSpec struct {
	ns, name, node string
	labels         map[string]string
	network        string // ns/name of the one secondary network
	ip             string // the pod's IP on it (network-status)
	port           int32  // a named container port "http" when non-zero
	noDevices      bool   // a local pod the kubelet gave no VF (misconfigured requests)
}

// createPod creates a running pod as multus leaves it: the networks
// annotation and the network-status it wrote. A local pod also gets the
// next free VF in PodResources, as the kubelet would have assigned it.
// It returns the representor for a local pod.
func (c *cluster) createPod(p podSpec) string {
	c.t.Helper()
	status := []nadv1.NetworkStatus{{Name: p.network, Interface: "net1", IPs: []string{p.ip}}}
	js, _ := json.Marshal(status)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: p.name, Labels: p.labels, Annotations: map[string]string{
			nadv1.NetworkAttachmentAnnot: p.network,
			nadv1.NetworkStatusAnnot:     string(js),
		}},
		Spec: corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/app"}}},
	}
	if p.port != 0 {
		pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: p.port, Protocol: corev1.ProtocolTCP}}
	}
	rep := ""
	if p.node == localNode && !p.noDevices {
		c.mu.Lock()
		vf := c.nextVF
		c.nextVF++
		c.podRes[p.ns+"/"+p.name] = &podresourcesv1.PodResources{Namespace: p.ns, Name: p.name, Containers: []*podresourcesv1.ContainerResources{{
			Name: "c", Devices: []*podresourcesv1.ContainerDevices{{ResourceName: resource, DeviceIds: []string{vfPCI(vf)}}},
		}}}
		c.syncPodResourcesLocked()
		c.mu.Unlock()
		rep = repName(vf)
	}
	created, err := c.admin.Kube.CoreV1().Pods(p.ns).Create(ctx(), pod, metav1.CreateOptions{})
	mustf(c.t, err, "pod %s/%s", p.ns, p.name)
	created.Status.Phase = corev1.PodRunning
	_, err = c.admin.Kube.CoreV1().Pods(p.ns).UpdateStatus(ctx(), created, metav1.UpdateOptions{})
	mustf(c.t, err, "pod %s/%s status", p.ns, p.name)
	return rep
}

func (c *cluster) deletePod(ns, name string) {
	c.t.Helper()
	err := c.admin.Kube.CoreV1().Pods(ns).Delete(ctx(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	mustf(c.t, err, "delete pod %s/%s", ns, name)
	c.mu.Lock()
	delete(c.podRes, ns+"/"+name)
	c.syncPodResourcesLocked()
	c.mu.Unlock()
}

func (c *cluster) syncPodResourcesLocked() {
	pods := make([]*podresourcesv1.PodResources, 0, len(c.podRes))
	for _, p := range c.podRes {
		pods = append(pods, p)
	}
	c.prs.SetPods(pods...)
}

// ingressPolicy allows TCP port from pods matching from (in the policy's
// namespace) to pods matching to, on network.
func ingressPolicy(ns, name, network string, to, from map[string]string, port intstr.IntOrString) *mnpv1beta1.MultiNetworkPolicy {
	tcp := corev1.ProtocolTCP
	return &mnpv1beta1.MultiNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{policy.PolicyForAnnotation: network}},
		Spec: mnpv1beta1.MultiNetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: to},
			PolicyTypes: []mnpv1beta1.MultiPolicyType{mnpv1beta1.PolicyTypeIngress},
			Ingress: []mnpv1beta1.MultiNetworkPolicyIngressRule{{
				Ports: []mnpv1beta1.MultiNetworkPolicyPort{{Protocol: &tcp, Port: &port}},
				From:  []mnpv1beta1.MultiNetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: from}}},
			}},
		},
	}
}

func (c *cluster) createPolicy(p *mnpv1beta1.MultiNetworkPolicy) {
	c.t.Helper()
	_, err := c.admin.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(p.Namespace).Create(ctx(), p, metav1.CreateOptions{})
	mustf(c.t, err, "policy %s/%s", p.Namespace, p.Name)
}

func (c *cluster) deletePolicy(ns, name string) {
	c.t.Helper()
	err := c.admin.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(ns).Delete(ctx(), name, metav1.DeleteOptions{})
	mustf(c.t, err, "delete policy %s/%s", ns, name)
}

// admits traces the first frame of the connection pp of the pod on
// representor rep (address pod) where the bridge placement decides it: a
// connection to the pod enters by the uplink (from the rest of the
// network), dispatched on the pod's MAC, then leaves by the pod's
// representor, whose egress hook holds the ingress rules of a port
// programmed alone (a free VF: it sent nothing, so the bridge has not
// learned it and software delivers the frame); a connection from the pod
// enters by its representor.
func (c *cluster) admits(rep string, pp policy.Packet, pod netip.Addr) bool {
	fr := tcdriver.FrameFor(pp, pod, 40000)
	ct := tcdriver.NewConntrack()
	if pp.Direction == policy.Egress {
		fr.DstMAC = tcdriver.MAC{0x02, 0xee, 0, 0, 0, 1} // beyond the uplink
		return tcdriver.Trace(c.tc.Filters(rep, tcdriver.HookIngress), tcdriver.HookIngress, fr, ct).Verdict == tcdriver.Pass
	}
	fr.DstMAC = c.resolver.macOf(rep)
	if tcdriver.Trace(c.tc.Filters(uplink, tcdriver.HookIngress), tcdriver.HookIngress, fr, ct).Verdict != tcdriver.Pass {
		return false
	}
	return tcdriver.Trace(c.tc.Filters(rep, tcdriver.HookEgress), tcdriver.HookEgress, fr, ct).Verdict == tcdriver.Pass
}

// ingressVerdict is the verdict on a new TCP connection from src (beyond
// the uplink) to dst:port, the pod on representor rep.
func (c *cluster) ingressVerdict(rep, src, dst string, port uint16) tcdriver.Verdict {
	pp := policy.Packet{Direction: policy.Ingress, Remote: netip.MustParseAddr(src), Protocol: policy.TCP, Port: port}
	if c.admits(rep, pp, netip.MustParseAddr(dst)) {
		return tcdriver.Pass
	}
	return tcdriver.Drop
}

// localVerdict is the verdict on a new TCP connection from the local pod
// on representor from (address src) to the local pod on representor to
// (dst:port): decided on the sender's port, dispatched on the receiver's
// MAC.
func (c *cluster) localVerdict(from, src, to, dst string, port uint16) tcdriver.Verdict {
	p := tcdriver.Packet{EthType: tcdriver.EthIPv4, DstMAC: c.resolver.macOf(to), Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst),
		IPProto: tcdriver.ProtoTCP, SrcPort: 40000, DstPort: port}
	return tcdriver.Trace(c.tc.Filters(from, tcdriver.HookIngress), tcdriver.HookIngress, p, tcdriver.NewConntrack()).Verdict
}

// dispatchesTo lists the ports whose ingress hook dispatches frames for
// rep's MAC to a section.
func (c *cluster) dispatchesTo(rep string) []string {
	m := c.resolver.macOf(rep)
	var out []string
	for _, dev := range c.tc.Devices() {
		for _, f := range c.tc.Filters(dev, tcdriver.HookIngress) {
			if f.Match.DstMAC == m && f.Match.DstMACMask != (tcdriver.MAC{}) {
				out = append(out, dev)
				break
			}
		}
	}
	return out
}

// waitEnforced waits until the representor allows allowed → dst:port and
// drops denied → dst:port: a policy is programmed (a pass alone proves
// nothing, an unisolated pod passes everything).
func (c *cluster) waitEnforced(t testing.TB, rep, allowed, denied, dst string, port uint16) {
	t.Helper()
	eventually(t, 10*time.Second, func() (bool, string) {
		a, d := c.ingressVerdict(rep, allowed, dst, port), c.ingressVerdict(rep, denied, dst, port)
		return a == tcdriver.Pass && d == tcdriver.Drop, fmt.Sprintf("%s: %s → %s:%d: %s (want pass); %s → %s:%d: %s (want drop)", rep, allowed, dst, port, a, denied, dst, port, d)
	})
}

// ourFilters counts the filters the driver owns on a representor.
func (c *cluster) ourFilters(rep string) int {
	st, err := c.tc.Dump(ctx(), rep)
	if err != nil {
		c.t.Fatalf("dump %s: %v", rep, err)
	}
	return len(st.Ours())
}

func (c *cluster) expectIngress(rep, src, dst string, port uint16, want tcdriver.Verdict) func() (bool, string) {
	return func() (bool, string) {
		got := c.ingressVerdict(rep, src, dst, port)
		return got == want, fmt.Sprintf("%s: %s → %s:%d: %s, want %s", rep, src, dst, port, got, want)
	}
}

// events lists the Warning Events on an object.
func (c *cluster) events(ns, kind, name string) []corev1.Event {
	list, err := c.admin.Kube.CoreV1().Events(ns).List(ctx(), metav1.ListOptions{})
	mustf(c.t, err, "events in %s", ns)
	var out []corev1.Event
	for _, e := range list.Items {
		if e.InvolvedObject.Kind == kind && e.InvolvedObject.Name == name {
			out = append(out, e)
		}
	}
	return out
}

func eventsText(evs []corev1.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "[%s %s: %s] ", e.Type, e.Reason, e.Message)
	}
	return b.String()
}
