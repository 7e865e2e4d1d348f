package sandbox

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// Probe is one kind of connection a matrix tries between two pods.
type Probe struct {
	Proto datapath.Proto
	Port  uint16
	IPv6  bool
}

func (p Probe) String() string {
	fam := ""
	if p.IPv6 {
		fam = "6"
	}
	return fmt.Sprintf("%s%s/%d", p.Proto, fam, p.Port)
}

func (p Probe) protocol() policy.Protocol {
	switch p.Proto {
	case datapath.UDP:
		return policy.UDP
	case datapath.SCTP:
		return policy.SCTP
	default:
		return policy.TCP
	}
}

type serverKey struct {
	pod   string
	proto datapath.Proto
	port  uint16
}

// Cell is one probe between two pods: what the packets did (Got: the
// reply came back) and what the reference evaluator says (Want).
type Cell struct {
	From, To  *Pod
	Probe     Probe
	Got, Want bool
	Result    datapath.Result
}

// Directions of a cell: between two local pods (across the bridge), from a
// remote pod in through the uplink, from a local pod out through it.
const (
	PodToPod      = "pod->pod"
	RemoteToLocal = "remote->local"
	LocalToRemote = "local->remote"
)

// Direction is the way the cell's connection crosses the node.
func (c *Cell) Direction() string {
	switch {
	case c.From.Remote:
		return RemoteToLocal
	case c.To.Remote:
		return LocalToRemote
	default:
		return PodToPod
	}
}

// Leaked tells that a connection policy denies got its request through to
// the destination's server (only its reply was lost): a denial must stop
// the request, not the answer.
func (c *Cell) Leaked() bool { return !c.Want && c.Result.Reached }

// Agrees tells that real traffic did what the reference evaluator says:
// delivered (request and reply) when allowed, the request never reaching
// the destination when denied.
func (c *Cell) Agrees() bool { return c.Got == c.Want && !c.Leaked() }

// Matrix is the connectivity of pods on one network.
type Matrix struct {
	Network policy.NetworkRef
	Pods    []*Pod
	Probes  []Probe
	Cells   []Cell // From-major, then To, then Probe
}

// Mismatches are the cells where real traffic disagrees with policy.Evaluate.
func (m *Matrix) Mismatches() []Cell {
	var out []Cell
	for _, c := range m.Cells {
		if !c.Agrees() {
			out = append(out, c)
		}
	}
	return out
}

// Format prints the matrix: a row per (from, to) pair, a column per probe;
// "ok" delivered, "--" dropped, and a "!" after a cell where the real
// traffic disagrees with the reference evaluator.
func (m *Matrix) Format() string {
	var b strings.Builder
	w := 0
	for _, p := range m.Pods {
		w = max(w, len(p.Key()))
	}
	fmt.Fprintf(&b, "  %-*s    %-*s ", w, "from", w, "to")
	for _, p := range m.Probes {
		fmt.Fprintf(&b, " %9s", p)
	}
	b.WriteString("\n")
	i := 0
	for i < len(m.Cells) {
		c := m.Cells[i]
		fmt.Fprintf(&b, "  %-*s -> %-*s ", w, c.From.Key(), w, c.To.Key())
		for range m.Probes {
			c := m.Cells[i]
			s := "--"
			if c.Got {
				s = "ok"
			}
			if !c.Agrees() {
				s += "!"
			} else {
				s += " "
			}
			fmt.Fprintf(&b, " %9s", s)
			i++
		}
		b.WriteString("\n")
	}
	if n := len(m.Mismatches()); n > 0 {
		fmt.Fprintf(&b, "  %d cell(s) marked ! disagree with policy.Evaluate\n", n)
	} else {
		fmt.Fprintf(&b, "  all %d probes agree with the reference evaluator (policy.Evaluate)\n", len(m.Cells))
	}
	fmt.Fprintf(&b, "  probes per direction:")
	for _, d := range []string{PodToPod, RemoteToLocal, LocalToRemote} {
		n := m.Count(d)
		fmt.Fprintf(&b, " %s %d (%d allowed)", d, n[0], n[1])
	}
	b.WriteString("\n")
	return b.String()
}

// Count returns the number of cells in direction d and how many of them
// the reference evaluator allows.
func (m *Matrix) Count(d string) [2]int {
	var n [2]int
	for i := range m.Cells {
		if m.Cells[i].Direction() == d {
			n[0]++
			if m.Cells[i].Want {
				n[1]++
			}
		}
	}
	return n
}

// Objects reads the cluster objects the policy core evaluates.
func (s *Sandbox) Objects(ctx context.Context) (*policy.Objects, error) {
	objs := &policy.Objects{}
	pods, err := s.Clients.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		objs.Pods = append(objs.Pods, &pods.Items[i])
	}
	nss, err := s.Clients.Kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range nss.Items {
		objs.Namespaces = append(objs.Namespaces, &nss.Items[i])
	}
	nads, err := s.Clients.NAD.K8sCniCncfIoV1().NetworkAttachmentDefinitions("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range nads.Items {
		objs.NADs = append(objs.NADs, &nads.Items[i])
	}
	pols, err := s.Clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	for i := range pols.Items {
		objs.Policies = append(objs.Policies, &pols.Items[i])
	}
	return objs, nil
}

// PolicyOptions are the policy options the agent runs with (its
// --network-plugins and ICMP flags at their DaemonSet values).
func (s *Sandbox) PolicyOptions() policy.Options {
	opts := policy.Options{}
	for _, a := range s.AgentCommandLine()[1:] {
		if v, ok := strings.CutPrefix(a, "--network-plugins="); ok {
			opts.NetworkPlugins = strings.Split(v, ",")
		}
		switch a {
		case "--accept-icmp", "--accept-icmp=true":
			opts.AcceptICMP = true
		case "--accept-icmpv6", "--accept-icmpv6=true":
			opts.AcceptICMPv6 = true
		}
	}
	return opts
}

func addrOf(a *PodAttachment, v6 bool) (netip.Addr, bool) {
	for _, ip := range a.IPs {
		if ip.Is6() == v6 {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// Expected is the reference evaluator's verdict on a new connection from
// one pod to another on network: the sender's egress must allow it and the
// receiver's ingress must allow it. A remote pod (of another node) has no
// policy here: only the local end's rules decide; between two remote pods
// nothing of this node is crossed, and Measure does not probe them.
func Expected(objs *policy.Objects, opts policy.Options, network policy.NetworkRef, from, to *Pod, p Probe) bool {
	fa, ta := from.Attachment(network), to.Attachment(network)
	if fa == nil || ta == nil {
		return false
	}
	src, ok1 := addrOf(fa, p.IPv6)
	dst, ok2 := addrOf(ta, p.IPv6)
	if !ok1 || !ok2 {
		return false
	}
	egress := from.Remote || policy.Evaluate(objs, opts, policy.Attachment{PodNamespace: from.Namespace, PodName: from.Name, Network: network, Interface: fa.Interface},
		policy.Packet{Direction: policy.Egress, Remote: dst, Protocol: p.protocol(), Port: p.Port})
	ingress := to.Remote || policy.Evaluate(objs, opts, policy.Attachment{PodNamespace: to.Namespace, PodName: to.Name, Network: network, Interface: ta.Interface},
		policy.Packet{Direction: policy.Ingress, Remote: src, Protocol: p.protocol(), Port: p.Port})
	return egress && ingress
}

// server returns the probe server of pod for proto/port, starting it.
func (s *Sandbox) server(p *Pod, proto datapath.Proto, port uint16) (*datapath.Server, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := serverKey{p.Key(), proto, port}
	if srv, ok := s.servers[k]; ok {
		return srv, nil
	}
	srv, err := datapath.ServeIn(p.NS, proto, port)
	if err != nil {
		return nil, fmt.Errorf("server %s/%d in %s: %w", proto, port, p.Key(), err)
	}
	s.servers[k] = srv
	return srv, nil
}

// ProbeOnce sends one real probe from one pod to another on network.
func (s *Sandbox) ProbeOnce(network policy.NetworkRef, from, to *Pod, p Probe, timeout time.Duration) (datapath.Result, error) {
	dst, ok := addrOf(to.Attachment(network), p.IPv6)
	if !ok {
		return datapath.Result{}, fmt.Errorf("pod %s has no address of that family on %s", to.Key(), network)
	}
	srv, err := s.server(to, p.Proto, p.Port)
	if err != nil {
		return datapath.Result{}, err
	}
	return datapath.ProbeFrom(from.NS, from.Key(), dst, p.Proto, p.Port, timeout, srv), nil
}

// Measure probes every ordered pair of distinct pods with every probe, all
// at once, and compares each result with the reference evaluator on the
// cluster's current objects. pods may include remote pods (AddRemote):
// they are probed to and from every local pod, through the uplink, but not
// among themselves.
func (s *Sandbox) Measure(ctx context.Context, network policy.NetworkRef, pods []*Pod, probes []Probe, timeout time.Duration) (*Matrix, error) {
	objs, err := s.Objects(ctx)
	if err != nil {
		return nil, err
	}
	opts := s.PolicyOptions()
	m := &Matrix{Network: network, Pods: pods, Probes: probes}
	for _, from := range pods {
		for _, to := range pods {
			if from == to || (from.Remote && to.Remote) {
				continue
			}
			for _, p := range probes {
				m.Cells = append(m.Cells, Cell{From: from, To: to, Probe: p, Want: Expected(objs, opts, network, from, to, p)})
			}
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(m.Cells))
	for i := range m.Cells {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &m.Cells[i]
			c.Result, errs[i] = s.ProbeOnce(network, c.From, c.To, c.Probe, timeout)
			c.Got = c.Result.Delivered
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Converge measures until real traffic agrees with the reference evaluator
// or the deadline passes (the agent programs a change within a second or
// so), and returns the last matrix.
func (s *Sandbox) Converge(ctx context.Context, network policy.NetworkRef, pods []*Pod, probes []Probe, timeout, within time.Duration) (*Matrix, error) {
	deadline := time.Now().Add(within)
	for {
		m, err := s.Measure(ctx, network, pods, probes, timeout)
		if err != nil || len(m.Mismatches()) == 0 || time.Now().After(deadline) {
			return m, err
		}
		select {
		case <-ctx.Done():
			return m, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Pod returns a running sandbox pod.
func (s *Sandbox) Pod(namespace, name string) *Pod {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pods[namespace+"/"+name]
}
