// Package sandbox runs the whole product on one machine, inside the kernel
// test bed (hack/kernel): a real etcd and kube-apiserver with deploy/
// installed, a node with a fake ConnectX-6 Dx (sysfs tree, VF ↔ representor
// veth pairs on a bridge as accelerated-bridge-cni wires them, each PF's
// uplink a port of that bridge wired to an outside namespace where remote
// pods of other nodes live), the real
// SR-IOV device plugin registered with the kubelet simulator, and the real
// multi-networkpolicy-tc binary running with the DaemonSet's flags and its
// ServiceAccount's token. `make demo` (test/sandbox/demo) and the
// end-to-end suite (test/e2e) are both built on it.
//
// Everything runs in the guest: the API server is on the guest's loopback,
// so no networking between the guest and the host is needed, and the guest
// powering off is the last word of the teardown.
package sandbox

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/cmd/multi-networkpolicy-tc/app"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

//go:embed testdata/pci.ids
var pciIDs []byte

//go:embed testdata/nad-crd.yaml
var nadCRD []byte

// Options locate what the sandbox runs.
type Options struct {
	// Repo is the repository root (deploy/ is read from it).
	Repo string
	// Dir holds the sandbox's state and logs (a tmpfs in the bed).
	Dir string
	// KubeInfo is the Info file of the API server running on the host
	// (hack/sandbox/run.sh starts it), as the guest sees it.
	KubeInfo string
	// KubeAssets holds kube-apiserver and etcd (hack/kube/build.sh); used
	// only without KubeInfo, to run them next to the sandbox.
	KubeAssets string
	// DevicePlugin is the sriov-network-device-plugin binary.
	DevicePlugin string
	// Agent is the multi-networkpolicy-tc binary.
	Agent string
	// AgentArgs are added to the DaemonSet's arguments.
	AgentArgs []string
	// Say reports progress; nil is silent.
	Say func(format string, args ...any)
}

// Sandbox is the running stack.
type Sandbox struct {
	opts     Options
	NodeName string
	Kube     *Kube
	Node     *Node
	Clients  *app.Clients
	// DaemonSetArgs are the agent container's arguments in deploy.yml.
	DaemonSetArgs []string

	kubeconfig string
	agent      *exec.Cmd
	agentDone  chan struct{}

	mu      sync.Mutex
	pods    map[string]*Pod
	servers map[serverKey]*datapath.Server
	// remoteSeq numbers remote pods' ports on the outside bridges.
	remoteSeq int
}

// Namespace and ServiceAccount of the agent in deploy/agent/deploy.yml.
const (
	AgentNamespace      = "multi-networkpolicy-tc"
	AgentServiceAccount = "multi-networkpolicy-tc"
	healthAddress       = "127.0.0.1:9311"
)

// Start brings the stack up: API server, deploy/, the node, the agent.
func Start(ctx context.Context, opts Options) (_ *Sandbox, err error) {
	if !datapath.InBed() {
		return nil, fmt.Errorf("the sandbox rewires the network and mounts over /sys: it runs only inside the kernel test bed (%s=1)", datapath.BedEnv)
	}
	if opts.Say == nil {
		opts.Say = func(string, ...any) {}
	}
	say := opts.Say
	s := &Sandbox{opts: opts, NodeName: "sandbox-node", pods: map[string]*Pod{}, servers: map[serverKey]*datapath.Server{}}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}

	// UML leaves the host name "(none)", which is not a valid label value.
	_ = unix.Sethostname([]byte(s.NodeName))
	start := time.Now()
	if opts.KubeInfo != "" {
		var info Info
		if s.Kube, info, err = RemoteKube(opts.KubeInfo, "/host"); err != nil {
			return nil, err
		}
		say("guest eth0 %s (UML tuntap) -> kube-apiserver on the host at %s", info.GuestAddress, info.Host)
		if err := guestNetwork(info.GuestAddress); err != nil {
			return nil, err
		}
		if err := s.Kube.waitHealthy(ctx, "kube-apiserver", nil, s.Kube.httpsClient(), s.Kube.Host()+"/readyz"); err != nil {
			return nil, err
		}
	} else {
		say("etcd + kube-apiserver (%s) on 127.0.0.1", opts.KubeAssets)
		if s.Kube, err = StartKube(ctx, filepath.Join(opts.Dir, "kube"), opts.KubeAssets, "127.0.0.1"); err != nil {
			return nil, err
		}
	}
	say("kube-apiserver ready at %s in %.1fs", s.Kube.Host(), time.Since(start).Seconds())
	if s.Clients, err = app.ClientsForConfig(s.Kube.Admin()); err != nil {
		return nil, err
	}

	say("installing deploy/crds, the NAD CRD (as multus ships it) and deploy/agent/deploy.yml (namespace, ServiceAccount, RBAC, DaemonSet)")
	objs, err := s.Kube.InstallDeploy(ctx, opts.Repo)
	if err != nil {
		return nil, err
	}
	if s.DaemonSetArgs, err = daemonSetArgs(objs, s.NodeName); err != nil {
		return nil, err
	}

	if s.Node, err = StartNode(ctx, filepath.Join(opts.Dir, "node"), opts.DevicePlugin, say); err != nil {
		return nil, err
	}

	tok, err := s.Clients.Kube.CoreV1().ServiceAccounts(AgentNamespace).CreateToken(ctx, AgentServiceAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](86400)}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for ServiceAccount %s/%s: %w", AgentNamespace, AgentServiceAccount, err)
	}
	s.kubeconfig = filepath.Join(opts.Dir, "agent.kubeconfig")
	if err := s.Kube.WriteKubeconfig(s.kubeconfig, tok.Status.Token); err != nil {
		return nil, err
	}
	if err := s.StartAgent(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// guestNetwork gives the guest's eth0 (the UML tuntap interface) its address.
func guestNetwork(cidr string) error {
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		return fmt.Errorf("guest address %q: %w", cidr, err)
	}
	eth0, err := netlink.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("the guest has no eth0 (boot the bed with BED_UML_ARGS=eth0=tuntap,TAP; hack/sandbox/run.sh does): %w", err)
	}
	if err := netlink.AddrReplace(eth0, addr); err != nil {
		return err
	}
	return netlink.LinkSetUp(eth0)
}

// daemonSetArgs returns the agent container's args from deploy.yml, with
// the downward-API $(NODE_NAME) resolved as the kubelet would.
func daemonSetArgs(objs []*unstructured.Unstructured, node string) ([]string, error) {
	for _, o := range objs {
		if o.GetKind() != "DaemonSet" {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		if len(containers) == 0 {
			break
		}
		c, _ := containers[0].(map[string]any)
		args, _, _ := unstructured.NestedStringSlice(c, "args")
		for i := range args {
			args[i] = strings.ReplaceAll(args[i], "$(NODE_NAME)", node)
		}
		return args, nil
	}
	return nil, errors.New("deploy/agent/deploy.yml has no DaemonSet with a container")
}

// AgentCommandLine is how the agent is started.
func (s *Sandbox) AgentCommandLine() []string {
	args := append([]string{s.opts.Agent}, s.DaemonSetArgs...)
	args = append(args, "--kubeconfig="+s.kubeconfig)
	return append(args, s.opts.AgentArgs...)
}

// StartAgent runs the agent binary and waits until it reports ready.
func (s *Sandbox) StartAgent(ctx context.Context) error {
	argv := s.AgentCommandLine()
	s.opts.Say("multi-networkpolicy-tc as the DaemonSet runs it: %s", strings.Join(argv[1:], " "))
	log, err := os.OpenFile(filepath.Join(s.opts.Dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return fmt.Errorf("start agent: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = log.Close(); close(done) }()
	s.agent, s.agentDone = cmd, done
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		resp, err := http.Get("http://" + healthAddress + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				s.opts.Say("agent ready (/readyz) in %.1fs", time.Since(start).Seconds())
				return nil
			}
		}
		select {
		case <-done:
			return fmt.Errorf("agent exited:\n%s", s.AgentLog())
		case <-ctx.Done():
			return fmt.Errorf("agent not ready: %w\n%s", ctx.Err(), s.AgentLog())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// StopAgent stops the agent (SIGTERM, as the kubelet does).
func (s *Sandbox) StopAgent() {
	stopProcess(s.agent, s.agentDone)
	s.agent = nil
}

// KillAgent kills the agent (SIGKILL: a crash).
func (s *Sandbox) KillAgent() {
	if s.agent == nil {
		return
	}
	_ = s.agent.Process.Kill()
	<-s.agentDone
	s.agent = nil
}

// AgentLog is the end of the agent's log.
func (s *Sandbox) AgentLog() string { return tail(filepath.Join(s.opts.Dir, "agent.log")) }

// RunAgentCommand runs the agent binary with args (e.g. debug mappings)
// against the sandbox, as the agent's ServiceAccount, and returns its output.
func (s *Sandbox) RunAgentCommand(args ...string) (string, error) {
	cmd := exec.Command(s.opts.Agent, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+s.kubeconfig)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Kubeconfig is the agent's kubeconfig.
func (s *Sandbox) Kubeconfig() string { return s.kubeconfig }

// Stop tears everything down: pods (VFs back to the host), agent, device
// plugin, kubelet simulator, API server and etcd.
func (s *Sandbox) Stop() {
	s.mu.Lock()
	pods := make([]*Pod, 0, len(s.pods))
	for _, p := range s.pods {
		pods = append(pods, p)
	}
	s.pods = map[string]*Pod{}
	for k, srv := range s.servers {
		_ = srv.Close()
		delete(s.servers, k)
	}
	s.mu.Unlock()
	for _, p := range pods {
		if p.Remote {
			_ = s.removeRemoteNetns(p)
			continue
		}
		_ = s.removePodNetns(p)
	}
	s.StopAgent()
	if s.Node != nil {
		s.Node.Stop()
	}
	if s.Kube != nil {
		s.Kube.Stop()
	}
}

// AgentRunning tells whether the agent process is running.
func (s *Sandbox) AgentRunning() bool {
	if s.agent == nil {
		return false
	}
	select {
	case <-s.agentDone:
		return false
	default:
		return true
	}
}
