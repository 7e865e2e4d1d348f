package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// The bridge placement. mlx5 offloads TC only on a port's ingress hook, and
// a frame the eswitch switches never reaches the destination representor's
// egress hook, so a pod's ingress is decided on every other port of its
// bridge (tcdriver.Bridge). The unit the agent syncs is therefore the
// bridge: any change to one attachment on it (rule set, MAC, VF, pod gone)
// re-applies the whole bridge, whose other ports carry the attachment's
// ingress section. ApplyBridge changes only what differs, so an unchanged
// port costs a dump and no write.
//
// A representor on no bridge keeps the old per-representor placement
// (Driver.Apply): free VFs the CNI has not attached yet, and nodes whose
// VFs are not bridged (a pod's ingress is then on its representor's egress
// hook, which only software enforces).

// portWant is what one VF representor on a bridge is to enforce.
type portWant struct {
	id     string // the attachment
	vf     string // its VF
	bridge string
	rs     *policy.RuleSet
	mac    net.HardwareAddr
	// closed: the port is kept out of the bridge program and closed both
	// ways by the old placement, because its ingress cannot be dispatched
	// to (no usable MAC). Its own filters drop what it sends, so the
	// bridge never learns its address, and its egress hook drops what
	// software floods to it.
	closed bool
}

// bridgeState is what the agent last applied on a bridge.
type bridgeState struct {
	uplinks []string
	bridge  *tcdriver.Bridge
}

// had reports whether dev was an uplink or a port of the bridge program.
func (s *bridgeState) had(dev string) bool {
	if slices.Contains(s.uplinks, dev) {
		return true
	}
	return slices.ContainsFunc(s.bridge.Ports, func(p tcdriver.BridgePort) bool { return p.Dev == dev })
}

func (a *Agent) bridgeOf(rep string) (string, error) {
	if a.topology == nil {
		return "", nil
	}
	br, err := a.topology.BridgeOf(rep)
	if err != nil {
		return "", fmt.Errorf("representor %s: reading its bridge: %w", rep, err)
	}
	return br, nil
}

// localPod is the local pod of an attachment, nil when the cache has none.
func (a *Agent) localPod(att policy.Attachment) *corev1.Pod {
	obj, ok, err := a.informers.localPods.GetStore().GetByKey(att.PodNamespace + "/" + att.PodName)
	if err != nil || !ok {
		return nil
	}
	p, _ := obj.(*corev1.Pod)
	return p
}

// bridgePort decides how the i-th VF of la, on bridge br, enters the
// bridge: its rule set (rs nil: held without known rules, isolated both
// ways, since a bridge section cannot be read back into a rule set) and
// MAC. The error says why the port is closed instead (want.closed).
func (a *Agent) bridgePort(la *localAttachment, i int, vf sriov.VF, br string, rs *policy.RuleSet) (*portWant, error) {
	if rs == nil {
		rs = a.isolatedRuleSet(la.att)
	}
	w := &portWant{id: la.att.ID(), vf: vf.PCIAddress, bridge: br, rs: rs}
	iface := deviceInterface(la.att, i)
	mac, source, err := vfMAC(a.topology, vf, a.localPod(la.att), la.att.Network, iface)
	if err != nil && !errors.Is(err, errNoMAC) {
		// Bad input (an annotation that does not parse, sources that
		// disagree) keeps the last good state, the MAC included: the
		// bridge may have learned it, and hardware switches frames to it
		// past anything but the sections dispatched on it.
		a.mu.Lock()
		if prev := a.ports[vf.Representor]; prev != nil && prev.id == w.id && prev.vf == w.vf && prev.mac != nil && !prev.closed {
			mac, source, err = prev.mac, "last good", nil
		}
		a.mu.Unlock()
	}
	switch {
	case err == nil:
		w.mac = mac
		a.log.WithFields(logrus.Fields{"attachment": la.att.String(), "vf": vf.PCIAddress, "mac": mac.String(), "source": source}).Debug("VF MAC")
		return w, nil
	case errors.Is(err, errNoMAC) && !rs.Ingress.Isolated:
		// Nothing is dispatched to a pod whose ingress is open: the
		// catch-all passes what is for it. Its MAC matters once a policy
		// isolates it, and is looked up again then.
		return w, nil
	}
	w.closed, w.rs = true, a.isolatedRuleSet(la.att)
	return w, fmt.Errorf("network %s: VF %s representor %s on bridge %s: %w", la.att.Network, vf.PCIAddress, vf.Representor, br, err)
}

// reportMAC records the Event of a port closed for its MAC.
func (a *Agent) reportMAC(la *localAttachment, err error) {
	a.metrics.errors.WithLabelValues(reasonMACUnknown).Inc()
	a.events.warn("Pod", la.att.PodNamespace, la.att.PodName, reasonMACUnknown,
		fmt.Sprintf("%v; the pod's ingress rules are dispatched on its VF's MAC on the bridge, so the VF is isolated both ways until the MAC is known; fix: set the VF's MAC (the NAD's or the pod's \"mac\") or let multus report it in the network-status", err))
}

// pendingOn lists the attachments that own VF representors on the bridge
// (ports) but have not planned them yet: after a restart the agent syncs
// one attachment at a time, and a bridge applied without a port that is
// there would drop that pod's sections from the other ports.
func (a *Agent) pendingOn(ports []string) []*localAttachment {
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := map[string]bool{}
	var out []*localAttachment
	for _, d := range ports {
		if a.ports[d] != nil {
			continue
		}
		vf, ok := a.vfReps[d]
		if !ok {
			continue
		}
		id, owned := a.vfOwner[vf]
		if la := a.local[id]; owned && la != nil && !seen[id] {
			seen[id] = true
			out = append(out, la)
		}
	}
	return out
}

// refreshVFReps re-resolves the node's VFs when the bridge has a port
// that is neither a known VF representor nor one of its last uplinks: a
// representor renamed, or one the sweep has not seen yet, must be known
// for what it is before it could be taken for an uplink (which would open
// its pod's egress).
func (a *Agent) refreshVFReps(br string, devs []string) {
	a.mu.Lock()
	prev := a.bridges[br]
	unknown := false
	for _, d := range devs {
		_, isVF := a.vfReps[d]
		unknown = unknown || a.ports[d] == nil && !isVF && (prev == nil || !slices.Contains(prev.uplinks, d))
	}
	vfs := map[string]bool{}
	if unknown {
		for vf := range a.vfResource {
			vfs[vf] = true
		}
		for vf := range a.vfOwner {
			vfs[vf] = true
		}
	}
	a.mu.Unlock()
	for vf := range vfs {
		if v, err := a.resolver.Resolve(vf); err == nil {
			a.mu.Lock()
			a.vfReps[v.Representor] = vf
			a.mu.Unlock()
		}
	}
}

// planBridgePorts records the ports of la's VFs that are on bridges
// (portWant) without programming anything, for a bridge that another
// attachment's sync applies.
func (a *Agent) planBridgePorts(la *localAttachment) {
	rs, _ := a.ruleSetFor(la)
	for i, vfPCI := range la.devices {
		vf, err := a.resolver.Resolve(vfPCI)
		if err != nil {
			continue
		}
		br, err := a.bridgeOf(vf.Representor)
		if err != nil || br == "" {
			continue
		}
		w, _ := a.bridgePort(la, i, vf, br, rs) // reported by la's own sync
		a.setPort(vf.Representor, w)
	}
}

func (a *Agent) setPort(rep string, w *portWant) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if w == nil {
		delete(a.ports, rep)
		return
	}
	a.ports[rep] = w
	a.vfReps[rep] = w.vf
}

// syncBridge applies bridge br as the agent wants it now. Its ports are
// classified as: the representors of local attachments (a port each, with
// the attachment's rule set and MAC); free VFs of enforced resources and
// ports closed for their MAC (left out: the old placement closes them);
// every other port — the PF's uplink representor, another PF's, a VXLAN or
// veth, a VF representor of a resource no enforced network uses — an
// uplink: frames entering by it are decided by the local pods' ingress
// rules, since nothing of ours decides them before. It returns the
// problems of single ports (the driver enforces what it can of the others)
// and the error of the bridge.
func (a *Agent) syncBridge(ctx context.Context, br string) (map[string]error, error) {
	a.mu.Lock()
	known := a.vfRepsKnown
	a.mu.Unlock()
	if !known {
		// Every port that is no representor of ours is an uplink: until
		// the VFs are known, a pod's port could be taken for one.
		return nil, fmt.Errorf("bridge %s: not applied yet: the kubelet's allocatable devices were never listed, so its VF representors are not known", br)
	}
	devs, err := a.topology.BridgePorts(br)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: listing its ports: %w", br, err)
	}
	// The bridge is built and applied under driverMu: two workers syncing
	// attachments of one bridge must not apply a bridge built before the
	// other's change after it.
	a.driverMu.Lock()
	defer a.driverMu.Unlock()
	a.refreshVFReps(br, devs)
	for _, la := range a.pendingOn(devs) {
		a.planBridgePorts(la)
	}
	resources := a.enforcedResources()
	b := &tcdriver.Bridge{Name: br}
	var left []string
	free := map[string]string{} // left out: free VFs (or not mapped yet), rep → VF
	a.mu.Lock()
	for _, d := range devs {
		w := a.ports[d]
		vf, isVF := a.vfReps[d]
		switch {
		case w != nil && w.bridge == br && !w.closed:
			att := w.rs.Attachment
			b.Ports = append(b.Ports, tcdriver.BridgePort{Dev: d, MAC: w.mac, RuleSet: w.rs,
				IPs: a.engine.PodIPs(att.PodNamespace, att.PodName, att.Network)})
		case w != nil && w.bridge == br:
			left = append(left, d)
		case isVF && resources[a.vfResource[vf]]:
			// A VF of an enforced resource is never an uplink: free,
			// or held by a pod not mapped yet, it is closed alone
			// until it is an attachment's port.
			left = append(left, d)
			free[d] = vf
		default:
			b.Uplinks = append(b.Uplinks, d)
		}
	}
	prev := a.bridges[br]
	a.mu.Unlock()
	if prev == nil || !slices.Equal(prev.uplinks, b.Uplinks) {
		a.log.WithFields(logrus.Fields{"bridge": br, "uplinks": b.Uplinks, "closedApart": left}).Info(
			"bridge ports that are no representor of a local attachment are uplinks: the local pods' ingress is decided on them")
	}
	// The driver removes our filters from a port that leaves the bridge
	// program, unless it was programmed alone since: so a VF that leaves
	// it (its pod gone, or its next pod not mapped yet) is closed alone
	// first, and is never without filters (a port closed for its MAC is
	// closed by its own sync, before it applies the bridge).
	var closeErrs []error
	for _, d := range left {
		vf, ok := free[d]
		if !ok || prev == nil || !prev.had(d) {
			continue
		}
		if cerr := a.driver.Apply(ctx, d, a.freeVF(vf)); cerr != nil && !errors.Is(cerr, tcdriver.ErrNoDevice) {
			closeErrs = append(closeErrs, fmt.Errorf("bridge %s: closing free VF %s representor %s: %w", br, vf, d, cerr))
		}
	}
	err = a.driver.ApplyBridge(ctx, b)
	// The driver names each port it refused (kept its previous rules, or
	// closed it); those are the problems of their attachments, reported
	// from perPort. The rest fails the bridge.
	perPort, rest := tcdriver.PortErrors(err)
	rest = append(closeErrs, rest...)
	a.markOffloadRefused(br, perPort)
	a.mu.Lock()
	a.bridges[br] = &bridgeState{uplinks: b.Uplinks, bridge: b}
	a.mu.Unlock()
	if len(rest) > 0 {
		return perPort, errors.Join(rest...)
	}
	return perPort, nil
}

func mapKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// bridgeDevices are the uplinks of every bridge the agent programs, for
// the stray sweep (the representors are the attachments').
func (a *Agent) bridgeDevices() map[string]bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]bool{}
	for _, st := range a.bridges {
		for _, d := range st.uplinks {
			out[d] = true
		}
	}
	return out
}

// lastBridge is the bridge as last applied, for --pod-rules-path.
func (a *Agent) lastBridge(br string) *tcdriver.Bridge {
	a.mu.Lock()
	defer a.mu.Unlock()
	if st := a.bridges[br]; st != nil {
		return st.bridge
	}
	return nil
}
