package app

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// writeBridgeBatch prints, in `tc -batch` syntax, what the driver installs
// on fresh ports for bridge b (only: those ports, nil: every port),
// uplinks first: per port its clsact qdisc, its chains, then its entry
// filter (last, as the driver installs it). On hardware profiles each
// filter is marked with whether the profile offloads it. It applies b on
// a tcdriver.Fake, which runs the driver's reconciler, and prints what it
// holds: exactly the driver's filters, entry targets and section numbers
// included (a live port keeps the numbers its sections had).
func writeBridgeBatch(w io.Writer, b *tcdriver.Bridge, opts tcdriver.Options, only map[string]bool) error {
	devs := append(slices.Sorted(slices.Values(b.Uplinks)), func() []string {
		var out []string
		for _, pt := range b.Ports {
			out = append(out, pt.Dev)
		}
		sort.Strings(out)
		return out
	}()...)
	fake := tcdriver.NewFake(opts, devs...)
	if err := fake.ApplyBridge(context.Background(), b); err != nil {
		return err
	}
	bw := bufio.NewWriter(w)
	prof := opts.Profile
	for _, dev := range devs {
		if only != nil && !only[dev] {
			continue
		}
		role := "uplink: every local pod's ingress, dispatched on its MAC"
		for _, pt := range b.Ports {
			if pt.Dev == dev {
				role = fmt.Sprintf("attachment %s, MAC %s: its egress, then the ingress of the other local pods, dispatched on their MACs", pt.RuleSet.Attachment, macString(pt))
			}
		}
		fmt.Fprintf(bw, "# bridge %s port %s (%s)\n", b.Name, dev, role)
		st, err := fake.Dump(context.Background(), dev)
		if err != nil {
			return err
		}
		fs := st.Ours()
		if len(fs) == 0 {
			fmt.Fprintf(bw, "# nothing on the bridge isolates what enters here: no filters\n\n")
			continue
		}
		if prof.Hardware {
			fmt.Fprintf(bw, "# offload profile %s: %d of %d filters in hardware; \"sw:\" filters run in software only\n", prof.Name, len(prof.Offloaded(fs)), len(fs))
		} else {
			fmt.Fprintf(bw, "# offload profile %s: every filter runs in software\n", prof.Name)
		}
		fmt.Fprintf(bw, "qdisc replace dev %s clsact\n", dev)
		var entries []*tcdriver.Filter
		line := func(f *tcdriver.Filter) {
			s := tcdriver.BatchLine(dev, f)
			if prof.Hardware {
				s += "  # " + prof.OffloadMark(f)
			}
			fmt.Fprintln(bw, s)
		}
		for _, f := range fs {
			if f.Chain == 0 {
				entries = append(entries, f)
				continue
			}
			line(f)
		}
		for _, f := range entries {
			line(f)
		}
		fmt.Fprintln(bw)
	}
	return bw.Flush()
}

func macString(pt tcdriver.BridgePort) string {
	if len(pt.MAC) == 0 {
		return "unknown (nothing is dispatched to it; its ingress is open)"
	}
	return pt.MAC.String()
}

// writeBridges renders -o tc in the bridge placement: the attachments of
// each enforced network in the manifests are put on one bridge (named
// after the network) with one uplink, each with the MAC its pod's
// network-status gives. A port whose MAC is missing while its ingress is
// isolated, or that the bridge cannot dispatch to, is closed alone (old
// placement, isolated both ways) as the agent does, and said on stderr.
func writeBridges(stdout, stderr io.Writer, o *renderOptions, objs *policy.Objects, engine *policy.Engine, ruleSets []*policy.RuleSet, opts tcdriver.Options) error {
	pods := map[string]*corev1.Pod{}
	for _, p := range objs.Pods {
		pods[p.Namespace+"/"+p.Name] = p
	}
	byNet := map[policy.NetworkRef][]*policy.RuleSet{}
	var nets []policy.NetworkRef
	for _, rs := range ruleSets {
		n := rs.Attachment.Network
		if !engine.Enforced(n) {
			fmt.Fprintf(stdout, "# %s: not enforced (the network's NAD is unknown or its plugin type is not in --network-plugins): no filters\n\n", rs.Attachment)
			continue
		}
		if byNet[n] == nil {
			nets = append(nets, n)
		}
		byNet[n] = append(byNet[n], rs)
	}
	sort.Slice(nets, func(i, j int) bool { return nets[i].String() < nets[j].String() })
	mine := func(att policy.Attachment) bool { return o.pod == "" || att.PodNamespace+"/"+att.PodName == o.pod }
	for _, n := range nets {
		b := &tcdriver.Bridge{Name: n.String(), Uplinks: []string{o.uplink}}
		only := map[string]bool{}
		if o.pod != "" {
			only[o.uplink] = true
		}
		type apart struct {
			dev string
			rs  *policy.RuleSet
			why error
		}
		var closed []apart
		for _, rs := range byNet[n] {
			att := rs.Attachment
			dev := att.PodNamespace + "/" + att.PodName + "/" + att.Interface
			if o.pod != "" && o.devSet && mine(att) {
				dev = o.dev
			}
			if mine(att) && o.pod != "" {
				only[dev] = true
			}
			mac, err := statusMAC(pods[att.PodNamespace+"/"+att.PodName], n, att.Interface)
			if err == nil && mac == nil && rs.Ingress.Isolated {
				err = fmt.Errorf("%w: metadata.annotations[%s] has no mac for interface %q", errNoMAC, nadv1.NetworkStatusAnnot, att.Interface)
			}
			if err != nil {
				closed = append(closed, apart{dev, rs, err})
				continue
			}
			b.Ports = append(b.Ports, tcdriver.BridgePort{Dev: dev, MAC: mac, RuleSet: rs,
				IPs: engine.PodIPs(att.PodNamespace, att.PodName, att.Network)})
		}
		refused, whole := tcdriver.PortErrors(tcdriver.ValidateBridge(b))
		if len(whole) > 0 {
			return errors.Join(whole...)
		}
		kept := b.Ports[:0]
		for _, pt := range b.Ports {
			if why, bad := refused[pt.Dev]; bad {
				closed = append(closed, apart{pt.Dev, pt.RuleSet, why})
			} else {
				kept = append(kept, pt)
			}
		}
		b.Ports = kept
		var sel map[string]bool
		if o.pod != "" {
			sel = only
		}
		if err := writeBridgeBatch(stdout, b, opts, sel); err != nil {
			return fmt.Errorf("bridge of network %s: %w", n, err)
		}
		for _, c := range closed {
			fmt.Fprintf(stderr, "closed: %s: %v; the agent isolates it both ways on its representor alone\n", c.rs.Attachment, c.why)
			if sel != nil && !sel[c.dev] {
				continue
			}
			d := policy.DirectionRules{Isolated: true, Stateful: true, AcceptICMP: o.acceptICMP, AcceptICMPv6: o.acceptICMPv6}
			iso := &policy.RuleSet{Attachment: c.rs.Attachment, Ingress: d, Egress: d}
			fmt.Fprintf(stdout, "# bridge %s port %s: closed alone (old placement, isolated both ways): %v\n", b.Name, c.dev, c.why)
			if err := tcdriver.WriteBatch(stdout, c.dev, iso, opts); err != nil {
				return err
			}
			fmt.Fprintln(stdout)
		}
	}
	return nil
}
