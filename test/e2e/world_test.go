package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy/manifest"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/sandbox"
)

// The suite runs inside the kernel test bed, started by `make test-e2e`
// (hack/make/e2e.mk), which passes the built parts as flags: the bed passes
// arguments to the guest, not environment variables.
var (
	kubeInfo     = flag.String("e2e.kube-info", "", "the API server's info file (hack/sandbox/run.sh passes it)")
	devicePlugin = flag.String("e2e.sriovdp", "", "sriov-network-device-plugin binary (hack/tools/sriovdp/build.sh)")
	agentBinary  = flag.String("e2e.agent", "", "multi-networkpolicy-tc binary")
)

// sb is the stack shared by every test; each test uses its own namespaces
// and subnets and deletes its pods and policies when it ends.
var (
	sb       *sandbox.Sandbox
	skipWhy  string
	startErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	switch {
	case *kubeInfo == "" || *devicePlugin == "" || *agentBinary == "":
		skipWhy = "the end-to-end suite runs the whole stack inside the kernel test bed: run `make test-e2e` (it builds the bed, kube-apiserver, etcd and the SR-IOV device plugin, and passes them as -e2e.* flags)"
	case !datapath.InBed():
		skipWhy = "the end-to-end suite rewires the network and mounts over /sys: it runs only inside the kernel test bed (`make test-e2e`)"
	}
	if skipWhy != "" {
		fmt.Println("e2e: skipped:", skipWhy)
		os.Exit(m.Run())
	}
	repo, _ := filepath.Abs(filepath.Join("..", ".."))
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	sb, startErr = sandbox.Start(ctx, sandbox.Options{
		Repo: repo, Dir: "/tmp/e2e", KubeInfo: *kubeInfo, DevicePlugin: *devicePlugin, Agent: *agentBinary,
		Say: func(format string, args ...any) {
			fmt.Printf("e2e: [%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
		},
	})
	cancel()
	code := m.Run()
	if sb != nil {
		sb.Stop()
	}
	os.Exit(code)
}

func requireSandbox(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	if startErr != nil {
		t.Fatalf("sandbox: %v", startErr)
	}
	if sb.AgentRunning() {
		return
	}
	t.Fatalf("the agent is not running (an earlier test left it stopped):\n%s", sb.AgentLog())
}

// world is one test's objects.
type world struct {
	t        *testing.T
	ctx      context.Context
	pods     []*sandbox.Pod
	remotes  []string
	policies [][2]string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	requireSandbox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	w := &world{t: t, ctx: ctx}
	t.Cleanup(func() {
		defer cancel()
		for _, p := range w.policies {
			_ = sb.DeletePolicy(context.Background(), p[0], p[1])
		}
		for _, name := range w.remotes {
			if err := sb.DeleteRemote(name); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		for _, p := range w.pods {
			if sb.Pod(p.Namespace, p.Name) != nil {
				if err := sb.DeletePod(context.Background(), p.Namespace, p.Name); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", sb.AgentLog())
		}
	})
	return w
}

// namespace creates a namespace with labels (namespaces are never deleted:
// without a controller-manager they would stay Terminating).
func (w *world) namespace(name string, labels map[string]string) {
	w.t.Helper()
	w.apply(&policy.Objects{Namespaces: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}}})
}

// nad creates an accelerated-bridge network on resource (cx6dx_p0 or
// cx6dx_p1).
func (w *world) nad(namespace, name, resource string) policy.NetworkRef {
	w.t.Helper()
	w.apply(&policy.Objects{NADs: []*nadv1.NetworkAttachmentDefinition{{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name,
			Annotations: map[string]string{"k8s.v1.cni.cncf.io/resourceName": sandbox.ResourcePrefix + "/" + resource}},
		Spec: nadv1.NetworkAttachmentDefinitionSpec{Config: fmt.Sprintf(
			`{"cniVersion": "0.4.0", "name": %q, "type": "accelerated-bridge", "bridge": %q}`, name, sandbox.Bridge)},
	}}})
	return policy.NetworkRef{Namespace: namespace, Name: name}
}

// attach is one network of a pod and its static addresses (CIDR form).
type attach struct {
	net policy.NetworkRef
	ips []string
}

func on(net policy.NetworkRef, ips ...string) attach { return attach{net, ips} }

// pod runs a pod with labels on networks; ports are its named container
// ports ("name:port/PROTO").
func (w *world) pod(namespace, name string, labels map[string]string, nets []attach, ports ...string) *sandbox.Pod {
	w.t.Helper()
	var sel []map[string]any
	for _, a := range nets {
		sel = append(sel, map[string]any{"name": a.net.Name, "namespace": a.net.Namespace, "ips": a.ips})
	}
	annot, _ := json.Marshal(sel)
	c := corev1.Container{Name: "app", Image: "registry.example/app"}
	for _, p := range ports {
		var pname, proto string
		var port int32
		if _, err := fmt.Sscanf(strings.NewReplacer(":", " ", "/", " ").Replace(p), "%s %d %s", &pname, &port, &proto); err != nil {
			w.t.Fatalf("port %q: %v", p, err)
		}
		c.Ports = append(c.Ports, corev1.ContainerPort{Name: pname, ContainerPort: port, Protocol: corev1.Protocol(proto)})
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels,
			Annotations: map[string]string{nadv1.NetworkAttachmentAnnot: string(annot)}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{c}},
	}
	p, err := sb.AddPod(w.ctx, pod)
	if err != nil {
		w.t.Fatal(err)
	}
	w.pods = append(w.pods, p)
	return p
}

// remote runs a pod of another node on net, behind the uplink of net's PF
// (in the sandbox's outside namespace), with static addresses (CIDR form):
// it has no Pod object, so policies select it only by ipBlock.
func (w *world) remote(net policy.NetworkRef, name string, ips ...string) *sandbox.Pod {
	w.t.Helper()
	p, err := sb.AddRemote(w.ctx, net, name, ips...)
	if err != nil {
		w.t.Fatal(err)
	}
	w.remotes = append(w.remotes, name)
	return p
}

// policy applies MultiNetworkPolicies written in YAML.
func (w *world) policy(yaml string) {
	w.t.Helper()
	objs := &policy.Objects{}
	if err := manifest.Decode(objs, w.t.Name(), strings.NewReader(yaml)); err != nil {
		w.t.Fatal(err)
	}
	for _, p := range objs.Policies {
		w.policies = append(w.policies, [2]string{p.Namespace, p.Name})
	}
	w.apply(objs)
}

func (w *world) apply(objs *policy.Objects) {
	w.t.Helper()
	if _, err := sb.Apply(w.ctx, objs); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) deletePolicy(namespace, name string) {
	w.t.Helper()
	if err := sb.DeletePolicy(w.ctx, namespace, name); err != nil {
		w.t.Fatal(err)
	}
}

// Probe sets.
var (
	tcp80    = sandbox.Probe{Proto: datapath.TCP, Port: 80}
	tcp443   = sandbox.Probe{Proto: datapath.TCP, Port: 443}
	udp53    = sandbox.Probe{Proto: datapath.UDP, Port: 53}
	tcp80v6  = sandbox.Probe{Proto: datapath.TCP, Port: 80, IPv6: true}
	tcp443v6 = sandbox.Probe{Proto: datapath.TCP, Port: 443, IPv6: true}
	sctp7777 = sandbox.Probe{Proto: datapath.SCTP, Port: 7777}
)

const probeTimeout = 1500 * time.Millisecond

// expect converges the matrix of pods on network and fails the test unless
// real traffic equals the reference evaluator's verdicts everywhere. It
// returns the matrix so tests can also check that the scenario has teeth.
func (w *world) expect(network policy.NetworkRef, pods []*sandbox.Pod, probes ...sandbox.Probe) *sandbox.Matrix {
	w.t.Helper()
	m, err := sb.Converge(w.ctx, network, pods, probes, probeTimeout, 20*time.Second)
	if err != nil {
		w.t.Fatal(err)
	}
	line := fmt.Sprintf("matrix on %s:", network)
	for _, d := range []string{sandbox.PodToPod, sandbox.RemoteToLocal, sandbox.LocalToRemote} {
		if n := m.Count(d); n[0] > 0 {
			line += fmt.Sprintf(" %s %d probes (%d allowed)", d, n[0], n[1])
		}
	}
	w.t.Log(line)
	if bad := m.Mismatches(); len(bad) > 0 {
		for _, c := range bad {
			w.t.Errorf("%s -> %s %s on %s (%s): real traffic %s, policy.Evaluate says %s (%s)",
				c.From.Key(), c.To.Key(), c.Probe, network, c.Direction(), got(&c), verdict(c.Want), c.Result)
		}
		w.t.Logf("matrix:\n%s", m.Format())
	}
	return m
}

// want asserts one cell's expected value, so that each scenario states the
// behaviour it is about and not only "agrees with the oracle".
func (w *world) want(m *sandbox.Matrix, from, to *sandbox.Pod, p sandbox.Probe, delivered bool) {
	w.t.Helper()
	for _, c := range m.Cells {
		if c.From == from && c.To == to && c.Probe == p {
			if c.Want != delivered {
				w.t.Errorf("%s -> %s %s: the reference evaluator says %s, the scenario expects %s", from.Key(), to.Key(), p, verdict(c.Want), verdict(delivered))
			}
			if c.Got != delivered || (!delivered && c.Result.Reached) {
				w.t.Errorf("%s -> %s %s: real traffic %s, the scenario expects %s", from.Key(), to.Key(), p, got(&c), verdict(delivered))
			}
			return
		}
	}
	w.t.Errorf("no cell %s -> %s %s", from.Key(), to.Key(), p)
}

// got is what real traffic did in a cell: a denied request that reached
// the server and only lost its reply is not a drop.
func got(c *sandbox.Cell) string {
	if !c.Got && c.Result.Reached {
		return "reached the server (reply lost)"
	}
	return verdict(c.Got)
}

func verdict(b bool) string {
	if b {
		return "delivered"
	}
	return "dropped"
}
