package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy/manifest"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// exitInvalidObjects: render succeeded, but some objects have invalid
// fields (their faulty parts allow nothing); the errors are on stderr.
const exitInvalidObjects = 3

type renderOptions struct {
	files     []string
	pod       string
	output    string
	dev       string
	devSet    bool
	placement string
	uplink    string
	agentRuleFlags
}

// Placements of render -o tc.
const (
	placementBridge      = "bridge"
	placementRepresentor = "representor"
)

// agentRuleFlags are the agent's flags that decide what rules it computes
// and programs, which the offline commands (render, explain) take too, so
// that they show what the agent would do.
type agentRuleFlags struct {
	networkPlugins []string
	acceptICMP     bool
	acceptICMPv6   bool
	offloadProfile string
	routedSources  bool
}

// add registers the flags; offloadUse says what --offload-profile does in
// this command.
func (a *agentRuleFlags) add(f *pflag.FlagSet, offloadUse string) {
	f.StringSliceVar(&a.networkPlugins, "network-plugins", policy.DefaultNetworkPlugins, "the agent's --network-plugins: CNI plugin types whose networks are enforced")
	f.BoolVar(&a.acceptICMP, "accept-icmp", false, "the agent's --accept-icmp: always accept ICMP (every type) in isolated directions")
	f.BoolVar(&a.acceptICMPv6, "accept-icmpv6", false, "the agent's --accept-icmpv6: always accept ICMPv6 (every type) in isolated directions")
	f.StringVar(&a.offloadProfile, "offload-profile", tcdriver.ProfileAuto, "the agent's "+offloadProfileUsage+"; "+offloadUse)
	f.BoolVar(&a.routedSources, "routed-sources", false, "the agent's --routed-sources: "+routedSourcesUsage)
}

func (a *agentRuleFlags) policyOptions() policy.Options {
	return policy.Options{NetworkPlugins: a.networkPlugins, AcceptICMP: a.acceptICMP, AcceptICMPv6: a.acceptICMPv6}
}

// profile is --offload-profile, "auto" resolved from the running kernel.
func (a *agentRuleFlags) profile() (tcdriver.Profile, error) {
	p, err := tcdriver.ParseProfile(a.offloadProfile, tcdriver.RunningKernelRelease())
	if err != nil {
		return p, badInput(err)
	}
	return p, nil
}

func newRenderCommand(stdout io.Writer) *cobra.Command {
	o := &renderOptions{}
	cmd := &cobra.Command{
		Use:   "render -f FILE...",
		Short: "Show the rules computed for pods from policy, pod, namespace and NAD manifests, offline",
		Long: `render reads multi-document YAML or JSON manifests (MultiNetworkPolicy, Pod,
Namespace, NetworkAttachmentDefinition; "-" is standard input) and prints the
rule set of every secondary network attachment of every pod, as the agent would
compute it. Attachments come from each pod's k8s.v1.cni.cncf.io/networks
annotation.

Exit codes: 0 ok; 2 unreadable input (bad YAML, unknown kind, unknown field,
unknown --pod); 3 rendered, but some objects have invalid fields (listed on
stderr; their faulty parts allow nothing).`,
		Example: `  multi-networkpolicy-tc render -f docs/examples/01-default-deny.yaml -f docs/examples/00-cluster.yaml
  multi-networkpolicy-tc render -f docs/examples/ -o json --pod blue/server
  multi-networkpolicy-tc render -f policy.yaml -f pods.yaml -o tc --dev eth5`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.devSet = cmd.Flags().Changed("dev")
			return runRender(o, cmd.InOrStdin(), stdout, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringSliceVarP(&o.files, "filename", "f", nil, "manifest file or directory (repeatable; - for stdin)")
	f.StringVar(&o.pod, "pod", "", "only this pod (namespace/name); with -o tc and the bridge placement, its ports and the uplink of a bridge of every pod in the manifests")
	f.StringVarP(&o.output, "output", "o", "text", "output format: text, json or tc (tc -batch commands)")
	f.StringVar(&o.dev, "dev", "REPRESENTOR", "representor name used in -o tc output (bridge placement: the name of the --pod's port; the others are named namespace/pod/interface)")
	f.StringVar(&o.placement, "placement", placementBridge, "with -o tc: bridge (what the agent programs on a bridge: every attachment of a network in the manifests on one bridge with one uplink, MACs from the pods' network-status) or representor (the old placement, one representor alone, pod ingress on its egress hook)")
	f.StringVar(&o.uplink, "uplink", "uplink", "with -o tc --placement bridge: the name of the bridges' uplink")
	o.add(f, "with -o tc each filter is marked with whether the profile offloads it")
	_ = cmd.MarkFlagRequired("filename")
	return cmd
}

func badInput(err error) error { return &ExitError{Code: exitBadInput, Err: err} }

func runRender(o *renderOptions, stdin io.Reader, stdout, stderr io.Writer) error {
	switch o.output {
	case "text", "json", "tc":
	default:
		return badInput(fmt.Errorf("--output %q: want text, json or tc", o.output))
	}
	switch o.placement {
	case placementBridge, placementRepresentor:
	default:
		return badInput(fmt.Errorf("--placement %q: want bridge or representor", o.placement))
	}
	objs, err := readManifests(o.files, stdin)
	if err != nil {
		return badInput(err)
	}
	engine := policy.NewEngine(o.policyOptions())
	atts, inputErrs := loadEngine(engine, objs)
	bridged := o.output == "tc" && o.placement == placementBridge
	if o.pod != "" && bridged {
		// The pod's ingress sits on the other ports of its bridge: every
		// attachment is computed, the output keeps the pod's ports.
		if !slices.ContainsFunc(atts, func(a policy.Attachment) bool { return a.PodNamespace+"/"+a.PodName == o.pod }) {
			return badInput(fmt.Errorf("--pod %s: no such pod with secondary networks in the manifests", o.pod))
		}
	} else if o.pod != "" {
		atts = slices.DeleteFunc(atts, func(a policy.Attachment) bool { return a.PodNamespace+"/"+a.PodName != o.pod })
		if len(atts) == 0 {
			return badInput(fmt.Errorf("--pod %s: no such pod with secondary networks in the manifests", o.pod))
		}
	}
	engine.SetAttachments(atts)
	// Per-attachment errors repeat the objects' own; report each object once.
	ruleSets, _ := engine.ComputeAll()
	inputErrs = append(inputErrs, engine.InputErrors()...)

	profile, perr := o.profile()
	if perr != nil {
		return perr
	}
	switch o.output {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if ruleSets == nil {
			ruleSets = []*policy.RuleSet{}
		}
		err = enc.Encode(ruleSets)
	case "tc":
		if bridged {
			err = writeBridges(stdout, stderr, o, objs, engine, ruleSets, tcdriver.Options{Profile: profile, RoutedSources: o.routedSources})
			break
		}
		for _, rs := range ruleSets {
			if err = tcdriver.WriteBatch(stdout, o.dev, rs, tcdriver.Options{Profile: profile}); err != nil {
				return fmt.Errorf("%s: %w", rs.Attachment, err)
			}
		}
	default:
		for _, rs := range ruleSets {
			writeRuleSetText(stdout, rs, engine.Enforced(rs.Attachment.Network))
		}
	}
	if err != nil {
		return err
	}
	for _, p := range objs.Policies {
		for _, u := range engine.UnenforcedNetworks(p.Namespace, p.Name) {
			fmt.Fprintf(stderr, "enforces nothing: MultiNetworkPolicy %s/%s: %s\n", p.Namespace, p.Name, u)
		}
	}
	if joined := errors.Join(inputErrs...); joined != nil {
		for _, line := range strings.Split(joined.Error(), "\n") {
			fmt.Fprintf(stderr, "invalid: %s\n", line)
		}
		return &ExitError{Code: exitInvalidObjects, Err: errors.New("some objects are invalid; their faulty parts allow nothing")}
	}
	return nil
}

// readManifests decodes every file (directories: their *.yaml, *.yml and
// *.json files, sorted).
func readManifests(paths []string, stdin io.Reader) (*policy.Objects, error) {
	objs := &policy.Objects{}
	for _, p := range paths {
		if p == "-" {
			if err := manifest.Decode(objs, "<stdin>", stdin); err != nil {
				return nil, err
			}
			continue
		}
		files := []string{p}
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			entries, err := os.ReadDir(p)
			if err != nil {
				return nil, err
			}
			files = nil
			for _, e := range entries {
				if n := e.Name(); !e.IsDir() && (strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml") || strings.HasSuffix(n, ".json")) {
					files = append(files, p+"/"+n)
				}
			}
		}
		for _, name := range files {
			f, err := os.Open(name)
			if err != nil {
				return nil, err
			}
			err = manifest.Decode(objs, name, f)
			_ = f.Close() // read-only
			if err != nil {
				return nil, err
			}
		}
	}
	return objs, nil
}

// loadEngine feeds the objects to the engine and returns the attachments
// the pods request, with the errors of pods whose annotation is invalid.
func loadEngine(e *policy.Engine, objs *policy.Objects) ([]policy.Attachment, []error) {
	for _, o := range objs.Namespaces {
		e.UpsertNamespace(o)
	}
	for _, o := range objs.NADs {
		e.UpsertNAD(o)
	}
	for _, o := range objs.Policies {
		e.UpsertPolicy(o)
	}
	var atts []policy.Attachment
	var errs []error
	for _, p := range objs.Pods {
		e.UpsertPod(p)
		a, err := policy.PodAttachments(p)
		if err != nil {
			errs = append(errs, err)
		}
		atts = append(atts, a...)
	}
	return atts, errs
}

func writeRuleSetText(w io.Writer, rs *policy.RuleSet, enforced bool) {
	fmt.Fprintf(w, "%s\n", rs.Attachment)
	if !enforced {
		fmt.Fprintf(w, "  not enforced: the network's NAD is unknown or its plugin type is not in --network-plugins\n\n")
		return
	}
	for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
		dr := rs.Direction(d)
		if !dr.Isolated {
			fmt.Fprintf(w, "  %s: not isolated, all traffic allowed\n", d)
			continue
		}
		echo := []string{}
		if dr.AcceptICMP {
			echo = append(echo, "ICMP")
		}
		if dr.AcceptICMPv6 {
			echo = append(echo, "ICMPv6")
		}
		always := "ARP, IPv6 ND"
		if len(echo) > 0 {
			always += ", " + strings.Join(echo, ", ")
		}
		fmt.Fprintf(w, "  %s: isolated by %s\n", d, strings.Join(dr.Policies, ", "))
		fmt.Fprintf(w, "    always allowed: %s; replies of allowed connections (stateful)\n", always)
		peerWord := map[policy.Direction]string{policy.Ingress: "from", policy.Egress: "to"}[d]
		for i := range dr.Rules {
			fmt.Fprintf(w, "    %s   # %s\n", ruleText(&dr.Rules[i], peerWord), strings.Join(dr.Rules[i].Origins, "; "))
		}
		if len(dr.Rules) == 0 {
			fmt.Fprintf(w, "    allow nothing else (deny all)\n")
		}
	}
	fmt.Fprintln(w)
}

// ruleText renders a rule as "allow from PEERS on PORTS".
func ruleText(r *policy.Rule, peerWord string) string {
	peers := "any address"
	if !r.AnyPeer {
		ps := make([]string, len(r.Peers))
		for i, p := range r.Peers {
			ps[i] = p.String()
		}
		peers = strings.Join(ps, ", ")
	}
	ports := "all protocols and ports"
	if len(r.Ports) > 0 {
		ps := make([]string, len(r.Ports))
		for i, p := range r.Ports {
			ps[i] = p.String()
		}
		ports = strings.Join(ps, ", ")
	}
	return fmt.Sprintf("allow %s %s on %s", peerWord, peers, ports)
}
