package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// exitDisagreement: explain found the installed filters, the computed
// rules or the reference evaluator disagreeing on the verdict.
const exitDisagreement = 4

type explainOptions struct {
	files      []string
	kubeconfig string
	pod        string
	network    string
	from, to   string
	proto      string
	port       int
	dev        string
	onNode     bool
	socket     string
	agentRuleFlags
}

func newExplainCommand(stdout io.Writer) *cobra.Command {
	o := &explainOptions{}
	cmd := &cobra.Command{
		Use:   "explain --pod NS/NAME (--from ADDR | --to ADDR) [--proto tcp --port 80]",
		Short: "Say whether a connection to or from a pod is allowed, by which policy rule, and its path through the TC filters",
		Long: `explain decides one new connection of a pod's secondary network the way the
agent enforces it, and says why:

  - the verdict, and the policy rules that allow it (e.g. "blue/allow-from-red
    ingress[0]") or the policies that isolate the pod when it is denied;
  - the path of its first packet through the TC filters computed for the
    attachment (the representor hook, each chain and filter it matches);
  - on the pod's node (--on-node, or --dev naming the representor), the path
    through the filters installed on its representor, with each filter's
    in_hw (offloaded) flag and packet counter, and the direction's counters
    per rule;
  - any disagreement between the installed filters, the computed rules and
    the reference evaluator (policy.Evaluate, which reads the API objects
    directly). A disagreement exits 4.

Policies, pods, namespaces and NADs come from manifests (-f, as render reads
them) or, without -f, from the API server (--kubeconfig, else $KUBECONFIG,
else in-cluster). Pass the agent's --network-plugins and --accept-icmp flags
so that the rules are the agent's.

Exit codes: 0 explained (allowed or denied); 1 the pod or its VF not found on
this node (--on-node); 2 bad input; 4 disagreement.`,
		Example: `  multi-networkpolicy-tc explain -f docs/examples/ --pod blue/server --from 10.10.0.20 --proto tcp --port 8080
  multi-networkpolicy-tc explain -f docs/examples/ --pod blue/client --to 10.10.0.11 --proto udp --port 53
  multi-networkpolicy-tc explain --pod blue/server --from 10.10.0.20 --port 8080 --on-node
  multi-networkpolicy-tc explain --pod blue/server --from 10.10.0.20 --port 8080 --dev ens1f0npf0vf0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			node := &explainNode{
				podResources: func(ctx context.Context) ([]*podresourcesv1.PodResources, error) {
					if err := podresources.CheckSocket(o.socket); err != nil {
						return nil, err
					}
					return listPodResources(ctx, o.socket)
				},
				resolver: sriov.NewSysfsResolver(),
				topology: sriov.NetlinkTopology{},
			}
			if o.onNode || o.dev != "" {
				drv, err := tcdriver.New(tcdriver.Options{}, logrus.StandardLogger(), nil)
				if err != nil {
					return err
				}
				defer func() { _ = drv.Close() }()
				node.driver = drv
			}
			return runExplain(cmd.Context(), o, node, cmd.InOrStdin(), stdout)
		},
	}
	f := cmd.Flags()
	f.StringSliceVarP(&o.files, "filename", "f", nil, "manifest file or directory (repeatable; - for stdin); default: the API server")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file, without -f (default: $KUBECONFIG, then in-cluster)")
	f.StringVar(&o.pod, "pod", "", "the pod (namespace/name)")
	f.StringVar(&o.network, "network", "", "only this network of the pod (namespace/name of its NAD)")
	f.StringVar(&o.from, "from", "", "a connection to the pod from this address (the pod's ingress)")
	f.StringVar(&o.to, "to", "", "a connection from the pod to this address (the pod's egress)")
	f.StringVar(&o.proto, "proto", "tcp", "tcp, udp, sctp, icmp or icmpv6")
	f.IntVar(&o.port, "port", 0, "the destination port (tcp, udp, sctp)")
	f.StringVar(&o.dev, "dev", "", "also trace through the filters installed on this device of this node: for a connection from the pod its representor; for one to it, in the bridge placement, the uplink of its bridge (or another local pod's port), dispatched on the MAC of its network-status")
	f.BoolVar(&o.onNode, "on-node", false, "find the pod's representors on this node (PodResources and sysfs, as debug mappings) and trace through their installed filters")
	f.StringVar(&o.socket, "podresources-socket", podresources.DefaultSocket, "the kubelet's PodResources socket (with --on-node)")
	o.add(f, "the computed filters are marked with whether it offloads them")
	return cmd
}

// explainPacket parses the connection of the command line.
func (o *explainOptions) packet() (policy.Packet, error) {
	var pp policy.Packet
	if (o.from == "") == (o.to == "") {
		return pp, errors.New("give exactly one of --from (to the pod) and --to (from the pod)")
	}
	addr, dir, flag := o.from, policy.Ingress, "--from"
	if o.to != "" {
		addr, dir, flag = o.to, policy.Egress, "--to"
	}
	remote, err := netip.ParseAddr(addr)
	if err != nil {
		return pp, fmt.Errorf("%s %q: not an IP address", flag, addr)
	}
	pp.Direction, pp.Remote = dir, remote.Unmap()
	proto, ok := policy.ParseProtocol(o.proto)
	if !ok {
		return pp, fmt.Errorf("--proto %q: want tcp, udp, sctp, icmp or icmpv6", o.proto)
	}
	pp.Protocol = proto
	icmp := pp.Protocol == policy.ICMP || pp.Protocol == policy.ICMPv6
	switch {
	case icmp && o.port != 0:
		return pp, fmt.Errorf("--port %d: %s has no ports", o.port, o.proto)
	case !icmp && (o.port < 1 || o.port > 65535):
		return pp, fmt.Errorf("--port %d: %s needs a port 1-65535", o.port, o.proto)
	case pp.Protocol == policy.ICMP && pp.Remote.Is6(), pp.Protocol == policy.ICMPv6 && pp.Remote.Is4():
		return pp, fmt.Errorf("--proto %s with the address %s of the other family", o.proto, pp.Remote)
	}
	pp.Port = uint16(o.port)
	return pp, nil
}

func runExplain(ctx context.Context, o *explainOptions, node *explainNode, stdin io.Reader, stdout io.Writer) error {
	pp, err := o.packet()
	if err != nil {
		return badInput(err)
	}
	ns, name, ok := strings.Cut(o.pod, "/")
	if !ok || ns == "" || name == "" {
		return badInput(fmt.Errorf("--pod %q: want namespace/name", o.pod))
	}
	var objs *policy.Objects
	if len(o.files) > 0 {
		if objs, err = readManifests(o.files, stdin); err != nil {
			return badInput(err)
		}
	} else if objs, err = listObjects(ctx, o.kubeconfig); err != nil {
		return err
	}
	profile, err := o.profile()
	if err != nil {
		return err
	}
	opts := o.policyOptions()
	engine := policy.NewEngine(opts)
	atts, _ := loadEngine(engine, objs)
	atts = slices.DeleteFunc(atts, func(a policy.Attachment) bool {
		return a.PodNamespace != ns || a.PodName != name || (o.network != "" && a.Network.String() != o.network)
	})
	if len(atts) == 0 {
		return badInput(fmt.Errorf("--pod %s: no such pod with a secondary network%s", o.pod, map[bool]string{true: " " + o.network, false: ""}[o.network != ""]))
	}
	engine.SetAttachments(atts)
	var reps map[string]representorOf
	if o.onNode && o.dev == "" {
		if reps, err = node.representors(ctx, objs); err != nil {
			return err
		}
	}
	disagree := false
	var nodeErrs []error
	for _, att := range atts {
		rs, _ := engine.Compute(att)
		e := explanation{att: att, pp: pp, rs: rs, profile: profile, enforced: engine.Enforced(att.Network),
			reference: policy.Evaluate(objs, opts, att, pp), referenceRules: policy.AllowedBy(objs, opts, att, pp), dev: o.dev}
		if r, ok := reps[nodeKey(att)]; o.onNode && o.dev == "" {
			if podErr, found := reps[att.PodNamespace+"/"+att.PodName]; !ok && found {
				r = podErr // the pod could not be mapped at all
			} else if !ok {
				r.err = fmt.Errorf("%s: not in this node's PodResources (is the pod on this node?)", att)
			}
			e.dev = r.dev
			if r.err == nil && pp.Direction == policy.Ingress {
				e.dev, e.mac, r.err = node.ingressPort(r, podOf(objs, att), att)
			}
			if r.err != nil {
				nodeErrs = append(nodeErrs, r.err)
				e.dev = ""
			}
		} else if e.mac == nil {
			e.mac, _ = statusMAC(podOf(objs, att), att.Network, att.Interface)
		}
		if e.dev != "" {
			if e.installed, err = node.driver.Dump(ctx, e.dev); err != nil {
				return err
			}
		}
		if err := e.write(ctx, stdout); err != nil {
			return err
		}
		disagree = disagree || e.disagree
	}
	if err := errors.Join(nodeErrs...); err != nil {
		return fmt.Errorf("finding the representors on this node: %w", err)
	}
	if disagree {
		return &ExitError{Code: exitDisagreement, Err: errors.New("the verdicts disagree; see above")}
	}
	return nil
}

// explainNode is what explain reads of the node: the kubelet's PodResources,
// sysfs (VF -> representor) and the installed filters.
type explainNode struct {
	podResources func(ctx context.Context) ([]*podresourcesv1.PodResources, error)
	resolver     sriov.Resolver
	// topology finds the bridge of a representor (nil: none is).
	topology sriov.Topology
	driver   tcdriver.Driver
}

type representorOf struct {
	dev string
	vf  sriov.VF
	err error
}

// ingressPort is where the pod's ingress is decided on this node: the
// uplink of its representor's bridge (the bridge placement; the other
// pods' ports decide it too), or its representor (on no bridge), and the
// VF's MAC the bridge dispatches on.
func (n *explainNode) ingressPort(r representorOf, pod *corev1.Pod, att policy.Attachment) (string, net.HardwareAddr, error) {
	if n.topology == nil {
		return r.dev, nil, nil
	}
	br, err := n.topology.BridgeOf(r.dev)
	if err != nil || br == "" {
		return r.dev, nil, err
	}
	if ub, err := n.topology.BridgeOf(r.vf.Uplink); err != nil || ub != br {
		return r.dev, nil, fmt.Errorf("%s: representor %s is on bridge %s but the PF's uplink %s is not; trace with --dev on the bridge port frames enter by", att, r.dev, br, r.vf.Uplink)
	}
	mac, _, err := vfMAC(n.topology, r.vf, pod, att.Network, att.Interface)
	if err != nil {
		return r.dev, nil, fmt.Errorf("%s: %w", att, err)
	}
	return r.vf.Uplink, mac, nil
}

// representors maps each local attachment (nodeKey) to its VF's
// representor, as the agent and `debug mappings` do; a pod that cannot be
// mapped at all is under its namespace/name, with the error.
func (n *explainNode) representors(ctx context.Context, objs *policy.Objects) (map[string]representorOf, error) {
	entries, err := n.podResources(ctx)
	if err != nil {
		return nil, err
	}
	src := &debugManifests{pods: map[string]*corev1.Pod{}, nads: map[string]*nadv1.NetworkAttachmentDefinition{}}
	for _, p := range objs.Pods {
		src.pods[p.Namespace+"/"+p.Name] = p
	}
	for _, d := range objs.NADs {
		src.nads[d.Namespace+"/"+d.Name] = d
	}
	out := map[string]representorOf{}
	for _, row := range debugMappingRows(ctx, entries, src, n.resolver, func(string) (bool, error) { return true, nil }) {
		ns, name, _ := strings.Cut(row.Pod, "/")
		netNS, netName, _ := strings.Cut(row.Network, "/")
		att := policy.Attachment{PodNamespace: ns, PodName: name, Network: policy.NetworkRef{Namespace: netNS, Name: netName}, Interface: row.Interface}
		r := representorOf{dev: row.Representor, vf: sriov.VF{PCIAddress: row.VFPCI, PFPCIAddress: row.PFPCI, Uplink: row.Uplink, Representor: row.Representor}}
		if row.VFIndex != nil {
			r.vf.Index = *row.VFIndex
		}
		if row.Error != "" {
			r.err = fmt.Errorf("%s: %s", row.Pod, row.Error)
		}
		if row.Network == "" {
			out[row.Pod] = representorOf{err: errors.New(row.Error)} // the error names the pod
			continue
		}
		out[nodeKey(att)] = r
	}
	return out, nil
}

// podOf is the attachment's pod in the objects, nil when absent.
func podOf(objs *policy.Objects, att policy.Attachment) *corev1.Pod {
	for _, p := range objs.Pods {
		if p.Namespace == att.PodNamespace && p.Name == att.PodName {
			return p
		}
	}
	return nil
}

// nodeKey identifies an attachment by pod, network and interface.
func nodeKey(a policy.Attachment) string { return a.ID() + "@" + a.Interface }

// explanation is one attachment's answer.
type explanation struct {
	att       policy.Attachment
	pp        policy.Packet
	rs        *policy.RuleSet
	enforced  bool
	reference bool
	// referenceRules are the policy rules, peers and ports that allow the
	// packet, as the reference evaluator reads the objects.
	referenceRules []string
	installed      *tcdriver.State
	dev            string
	// mac is the pod's VF MAC (on the node, or its network-status), the
	// bridge placement's dispatch key.
	mac      net.HardwareAddr
	disagree bool
	profile  tcdriver.Profile
}

func verdictWord(allowed bool) string {
	if allowed {
		return "allowed"
	}
	return "denied"
}

func (e *explanation) write(ctx context.Context, w io.Writer) error {
	dir, peerWord, remoteWord := "ingress", "from", "from"
	if e.pp.Direction == policy.Egress {
		dir, peerWord, remoteWord = "egress", "to", "to"
	}
	conn := strings.ToLower(string(e.pp.Protocol))
	if e.pp.Port != 0 {
		conn += "/" + strconv.Itoa(int(e.pp.Port))
	}
	p := &debugTableWriter{w: w}
	p.printf("%s: %s %s %s %s\n", e.att, dir, remoteWord, e.pp.Remote, conn)
	allowed := !e.enforced || e.rs.Allows(e.pp)
	p.printf("  verdict: %s\n", verdictWord(allowed))
	d := e.rs.Direction(e.pp.Direction)
	switch {
	case !e.enforced:
		p.printf("  not enforced: the network's NAD is unknown or its plugin type is not in --network-plugins\n")
	case !d.Isolated:
		p.printf("  not isolated: no MultiNetworkPolicy selects this pod for %s on this network\n", dir)
	default:
		p.printf("  isolated by %s\n", strings.Join(d.Policies, ", "))
		matched := false
		for i := range d.Rules {
			r := &d.Rules[i]
			if r.MatchesPeer(e.pp.Remote) && r.MatchesPort(e.pp.Protocol, e.pp.Port) {
				matched = true
				p.printf("  allowed by %s: %s\n", strings.Join(r.Origins, "; "), ruleText(r, peerWord))
			}
		}
		if !matched && allowed {
			p.printf("  allowed by --accept-%s\n", strings.ToLower(string(e.pp.Protocol)))
		}
		if !allowed {
			p.printf("  no rule of these policies allows it\n")
		}
	}
	switch {
	case e.reference != allowed:
		e.disagree = true
		p.printf("  DISAGREEMENT: the reference evaluator says %s\n", verdictWord(e.reference))
	case len(e.referenceRules) > 0:
		p.printf("  the reference evaluator agrees: allowed by %s\n", strings.Join(e.referenceRules, ", "))
	default:
		p.printf("  the reference evaluator agrees\n")
	}
	if !e.enforced {
		p.printf("\n")
		return p.err
	}

	// The bridge placement, the pod alone on a bridge: a connection to
	// the pod is decided where it enters, on the uplink (the other local
	// pods' ports carry the same section), dispatched on the pod's MAC; a
	// connection from the pod on its own representor's ingress hook.
	hook := tcdriver.HookIngress
	frame := tcdriver.FrameFor(e.pp, unspecified(e.pp.Remote), 40000)
	mac, macNote := e.mac, ""
	if len(mac) == 0 {
		mac, macNote = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}, " (the pod's MAC is unknown; 02:00:00:00:00:01 stands for it)"
	}
	podMAC, _ := tcdriver.MACOf(mac)
	port, where := "pod", "the pod's representor"
	if e.pp.Direction == policy.Ingress {
		port, where = "uplink", "the uplink"
		frame.DstMAC = podMAC
	} else {
		frame.DstMAC = tcdriver.MAC{0x02, 0xee, 0, 0, 0, 0x01} // beyond the uplink
	}
	computed := tcdriver.NewFake(tcdriver.Options{Profile: e.profile}, "uplink", "pod")
	if err := computed.ApplyBridge(ctx, &tcdriver.Bridge{Name: "computed", Uplinks: []string{"uplink"},
		Ports: []tcdriver.BridgePort{{Dev: "pod", MAC: mac, RuleSet: e.rs}}}); err != nil {
		return fmt.Errorf("%s: compiling the rules: %w", e.att, err)
	}
	st, _ := computed.Dump(ctx, port)
	res := tcdriver.Trace(st.Filters, hook, frame, tcdriver.NewConntrack())
	p.printf("  computed filters (offload profile %s, bridge placement%s), %s ingress hook: %s\n", e.profile.Name, macNote, where, res.Verdict)
	writeHits(p, res, false, e.profile)
	if e.profile.Hardware {
		hw := tcdriver.TraceOffloaded(e.profile, st.Filters, hook, frame, tcdriver.NewConntrack())
		if hw.Decided {
			p.printf("  the filters %s offloads alone: %s in hardware\n", e.profile.Name, hw.Verdict)
		} else {
			p.printf("  the filters %s offloads alone do not decide: software decides (%s)\n", e.profile.Name, hw.Path[len(hw.Path)-1])
		}
	}
	if (res.Verdict == tcdriver.Pass) != allowed {
		e.disagree = true
		p.printf("  DISAGREEMENT: the computed filters %s what the rules %s\n", map[bool]string{true: "pass", false: "drop"}[res.Verdict == tcdriver.Pass], verdictWord(allowed))
	}
	if e.installed != nil {
		// A device whose hook of the old placement holds filters of ours
		// (the pod's ingress on its representor's egress hook) is traced
		// there; else the bridge placement's ingress hook.
		oldHook := tcdriver.HookFor(e.pp.Direction)
		if oldHook != hook && slices.ContainsFunc(e.installed.Ours(), func(f *tcdriver.Filter) bool { return f.Hook == oldHook }) {
			hook = oldHook
			frame.DstMAC = tcdriver.MAC{}
		}
		got := tcdriver.Trace(e.installed.Filters, hook, frame, tcdriver.NewConntrack())
		inHW, total := e.installed.InHWCount()
		p.printf("  installed on %s (%d filters of ours, %d in hardware): %s\n", e.dev, total, inHW, got.Verdict)
		writeHits(p, got, true, e.profile)
		if cnt, ok := tcdriver.CountersOf(e.installed, hook, d, tcdriver.Options{}); ok && hook == tcdriver.HookFor(e.pp.Direction) {
			p.printf("  counters on %s since its filters were installed: %d new connections allowed, %d packets dropped\n", e.dev, cnt.Allowed(), cnt.Dropped)
			for i, n := range cnt.Rules {
				p.printf("    %d  %s\n", n, strings.Join(d.Rules[i].Origins, "; "))
			}
			if d.AcceptICMP || d.AcceptICMPv6 {
				p.printf("    %d  --accept-icmp\n", cnt.ICMP)
			}
		}
		for _, f := range e.installed.Filters {
			if f.Foreign && f.Hook == hook && f.Chain == 0 {
				p.printf("  note: a foreign filter runs in chain 0 (%s); explain cannot evaluate it, and if it ends classification first our filters do not see the packet\n", f)
			}
		}
		switch {
		case total == 0:
			e.disagree = true
			p.printf("  DISAGREEMENT: no filter of ours is installed on %s\n", e.dev)
		case got.Verdict != res.Verdict:
			e.disagree = true
			p.printf("  DISAGREEMENT: the installed filters %s, the computed ones %s\n", got.Verdict, res.Verdict)
		}
	}
	p.printf("\n")
	return p.err
}

func writeHits(p *debugTableWriter, res tcdriver.TraceResult, inHW bool, prof tcdriver.Profile) {
	for _, f := range res.Hits {
		hw := ""
		if inHW {
			hw = fmt.Sprintf("  [%s, %d packets]", map[bool]string{true: "in_hw", false: "not_in_hw"}[f.InHW], f.Packets)
		}
		if prof.Hardware {
			hw += "  # " + prof.OffloadMark(f)
		}
		p.printf("    %s%s\n", f, hw)
	}
	if n := len(res.Path); n > 0 && strings.HasSuffix(res.Path[n-1], "no match") {
		p.printf("    %s: pass\n", res.Path[n-1])
	}
}

func unspecified(like netip.Addr) netip.Addr {
	if like.Is6() {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// listObjects reads what policy depends on from the API server.
func listObjects(ctx context.Context, kubeconfig string) (*policy.Objects, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("API server config (--kubeconfig, $KUBECONFIG or in-cluster; or use -f): %w", err)
	}
	c, err := ClientsForConfig(cfg)
	if err != nil {
		return nil, err
	}
	objs := &policy.Objects{}
	pods, err := c.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	for i := range pods.Items {
		objs.Pods = append(objs.Pods, &pods.Items[i])
	}
	nss, err := c.Kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	for i := range nss.Items {
		objs.Namespaces = append(objs.Namespaces, &nss.Items[i])
	}
	nads, err := c.NAD.K8sCniCncfIoV1().NetworkAttachmentDefinitions("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing NetworkAttachmentDefinitions: %w", err)
	}
	for i := range nads.Items {
		objs.NADs = append(objs.NADs, &nads.Items[i])
	}
	mnps, err := c.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing MultiNetworkPolicies: %w", err)
	}
	for i := range mnps.Items {
		objs.Policies = append(objs.Policies, &mnps.Items[i])
	}
	return objs, nil
}
