package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// unmappedNetwork and openNetwork name the pseudo-networks of a pod's VFs
// that could not be mapped, and of those on no enforced network. The
// parentheses make them no valid NAD name.
const (
	unmappedNetwork = "(unmapped)"
	openNetwork     = "(not policed)"
)

// keepMapped merges a new mapping (next) with the attachments the pod (same
// UID) already has. What a running pod is attached to was fixed by the CNI
// when it started, so an attachment stays as it was mapped first while the
// kubelet lists its VFs for the pod (or says nothing, res nil): a later
// mapping only adds VFs not mapped yet. An attachment the new mapping no
// longer has is reported: its input changed or became unreadable.
func (a *Agent) keepMapped(pod *corev1.Pod, res *podresourcesv1.PodResources, next []*localAttachment, mapErr error) []*localAttachment {
	key := pod.Namespace + "/" + pod.Name
	a.mu.Lock()
	var prev []*localAttachment
	for _, id := range a.byPod[key] {
		if la := a.local[id]; la != nil && la.podUID == pod.UID && la.kind == vfsOnNetwork {
			prev = append(prev, la)
		}
	}
	a.mu.Unlock()
	held := heldDevices(res)
	newIDs := map[string]bool{}
	for _, la := range next {
		newIDs[la.att.ID()] = true
	}
	var out []*localAttachment
	for _, p := range prev {
		var devs []string
		for _, d := range p.devices {
			if held == nil || held[d] {
				devs = append(devs, d)
			}
		}
		if len(devs) == 0 {
			continue // released by the kubelet: really gone
		}
		kept := *p
		kept.devices = devs
		kept.att.Key = strings.Join(devs, ",")
		out = append(out, &kept)
		if mapErr == nil && !newIDs[p.att.ID()] {
			a.reportKept(pod, &kept)
		}
	}
	taken := devicesOf(out)
	keptIDs := map[string]bool{}
	for _, la := range out {
		keptIDs[la.att.ID()] = true
	}
	for _, la := range next {
		if keptIDs[la.att.ID()] || slices.ContainsFunc(la.devices, func(d string) bool { return taken[d] }) {
			continue // mapped already
		}
		out = append(out, la)
	}
	return out
}

// devicesOf is the set of the attachments' VFs.
func devicesOf(atts []*localAttachment) map[string]bool {
	out := map[string]bool{}
	for _, la := range atts {
		for _, d := range la.devices {
			out[d] = true
		}
	}
	return out
}

// heldDevices is the set of device IDs the kubelet lists for the pod, nil
// when it said nothing.
func heldDevices(res *podresourcesv1.PodResources) map[string]bool {
	if res == nil {
		return nil
	}
	held := map[string]bool{}
	for _, c := range res.GetContainers() {
		for _, d := range c.GetDevices() {
			for _, id := range d.GetDeviceIds() {
				held[id] = true
			}
		}
	}
	return held
}

// otherVFs groups the pod's VFs of resources some enforced network uses
// that no attachment in next covers. When the pod mapped, they are on no
// enforced network and are opened (vfsOpen); when it did not, which of
// them is policed is unknown and they are isolated both ways
// (vfsUnmapped). Until the kubelet lists them for the pod they stay as
// free VFs are: closed.
func (a *Agent) otherVFs(pod *corev1.Pod, res *podresourcesv1.PodResources, next []*localAttachment, mapped bool) *localAttachment {
	if res == nil {
		return nil
	}
	resources := a.enforcedResources()
	taken := devicesOf(next)
	var devs []string
	for _, c := range res.GetContainers() {
		for _, d := range c.GetDevices() {
			if !resources[d.GetResourceName()] {
				continue
			}
			for _, id := range d.GetDeviceIds() {
				if !taken[id] && !slices.Contains(devs, id) {
					devs = append(devs, id)
				}
			}
		}
	}
	if len(devs) == 0 {
		return nil
	}
	sort.Strings(devs)
	kind, name := vfsUnmapped, unmappedNetwork
	if mapped {
		kind, name = vfsOpen, openNetwork
	}
	att := policy.Attachment{PodNamespace: pod.Namespace, PodName: pod.Name,
		Network: policy.NetworkRef{Namespace: pod.Namespace, Name: name}, Key: strings.Join(devs, ",")}
	return &localAttachment{att: att, podUID: pod.UID, devices: devs, kind: kind}
}

// enforcedResources are the device plugin resources of enforced networks.
func (a *Agent) enforcedResources() map[string]bool {
	out := map[string]bool{}
	for _, obj := range a.informers.nads.GetStore().List() {
		n, ok := obj.(*nadv1.NetworkAttachmentDefinition)
		if !ok {
			continue
		}
		rn := n.Annotations[podresources.ResourceNameAnnotation]
		if rn != "" && a.engine.Enforced(policy.NetworkRef{Namespace: n.Namespace, Name: n.Name}) {
			out[rn] = true
		}
	}
	return out
}

// isolatedRuleSet allows nothing either way (but what --accept-icmp* let
// through on any isolated direction): the rule set of an attachment whose
// input is unusable and whose last good rules are unknown.
func (a *Agent) isolatedRuleSet(att policy.Attachment) *policy.RuleSet {
	d := policy.DirectionRules{Isolated: true, Stateful: true, AcceptICMP: a.opts.AcceptICMP, AcceptICMPv6: a.opts.AcceptICMPv6}
	return &policy.RuleSet{Attachment: att, Ingress: d, Egress: d}
}

// networkProblem says why an attachment's network cannot be enforced as it
// is now: the object at fault, its field, and the fix. It is empty when
// the network is usable.
type networkProblem struct {
	kind, namespace, name, field, what, fix string
}

func (a *Agent) networkProblem(podNS, podName string, ref policy.NetworkRef) *networkProblem {
	nad, err := a.lookupNAD(ref.Namespace, ref.Name)
	if err != nil {
		return &networkProblem{kind: "Pod", namespace: podNS, name: podName, field: "metadata.annotations[" + nadv1.NetworkAttachmentAnnot + "]",
			what: fmt.Sprintf("network %s: %v", ref, err), fix: "recreate the NetworkAttachmentDefinition, or delete the pod to release its VF"}
	}
	p := &networkProblem{kind: "NetworkAttachmentDefinition", namespace: ref.Namespace, name: ref.Name}
	switch {
	case !a.engine.Enforced(ref):
		p.field, p.fix = "spec.config", "restore spec.config; pods attached while it was enforced keep their rules until they are deleted"
		if typ, err := policy.NADPluginType(nad); err != nil {
			p.what = fmt.Sprintf("does not parse (%v)", err)
		} else {
			p.what = fmt.Sprintf("plugin type %q is not one of --network-plugins %v", typ, a.opts.NetworkPlugins)
		}
	case nad.Annotations[podresources.ResourceNameAnnotation] == "":
		p.field, p.what = "metadata.annotations["+podresources.ResourceNameAnnotation+"]", "missing, so new pods' VFs on it cannot be found"
		p.fix = "restore the annotation"
	default:
		return &networkProblem{kind: "Pod", namespace: podNS, name: podName, field: "metadata.annotations[" + nadv1.NetworkAttachmentAnnot + "]",
			what: fmt.Sprintf("no longer lists network %s", ref), fix: "restore the annotation; a running pod cannot change its networks"}
	}
	return p
}

// reportKept tells why an attachment is kept that the pod's current input
// no longer maps.
func (a *Agent) reportKept(pod *corev1.Pod, la *localAttachment) {
	p := a.networkProblem(pod.Namespace, pod.Name, la.att.Network)
	a.metrics.errors.WithLabelValues(reasonInvalidInput).Inc()
	a.events.warn(p.kind, p.namespace, p.name, reasonInvalidInput, fmt.Sprintf(
		"%s: %s; pod %s/%s keeps the rules of network %s on VF %s; fix: %s",
		p.field, p.what, pod.Namespace, pod.Name, la.att.Network, strings.Join(la.devices, ","), p.fix))
}

// heldRuleSet is what a held attachment programs: its last rules from this
// run, or nil when there are none (see programHeld).
func (a *Agent) heldRuleSet(id string) *policy.RuleSet {
	a.mu.Lock()
	defer a.mu.Unlock()
	if ps := a.programmed[id]; ps != nil {
		return ps.good
	}
	return nil
}

// programHeld programs a held attachment's representor whose last good
// rules this run does not know (a new attachment, or a restart): rules of
// ours already there are the last a valid input produced and stay; a
// representor without any is isolated both ways.
func (a *Agent) programHeld(ctx context.Context, rep string, la *localAttachment) error {
	st, err := a.driver.Dump(ctx, rep)
	if err != nil {
		return err
	}
	if len(st.Ours()) > 0 {
		return nil
	}
	return a.driver.Apply(ctx, rep, a.isolatedRuleSet(la.att))
}

// freeVF is the rule set of a VF no pod holds: closed, isolated both ways.
// The kubelet gives a VF to a pod, and the CNI moves it into the pod,
// before the agent can know: a closed VF lets the pod send and receive
// nothing until its own rules replace these (make-before-break), so no
// frame its policy denies ever passes. A pod whose VF is on no enforced
// network gets it opened once mapped (vfsOpen).
func (a *Agent) freeVF(vf string) *policy.RuleSet {
	return a.isolatedRuleSet(policy.Attachment{Network: policy.NetworkRef{Name: "(free)"}, Key: vf})
}

// sweepFreeVFs leaves every VF the kubelet can allocate that no pod holds
// (held: every device ID the kubelet lists for a pod) and no attachment
// owns as a free VF's representor must be: closed on a resource an
// enforced network uses, else without filters of ours. It counts the
// representors that had other filters of ours (orphans: left by a pod
// deleted while the agent was down, or a failed removal).
func (a *Agent) sweepFreeVFs(ctx context.Context, held map[string]bool) {
	actx, cancel := context.WithTimeout(ctx, podResourcesDeadline)
	alloc, err := a.pr.GetAllocatableResources(actx)
	cancel()
	if err != nil {
		if a.logs.allow("allocatable") {
			a.log.WithError(err).Warn("cannot list the node's allocatable devices; free VFs are not checked")
		}
		return
	}
	resources := a.enforcedResources()
	a.mu.Lock()
	a.vfRepsKnown = true
	a.mu.Unlock()
	// allocReps: the representors of every VF the kubelet can allocate.
	// complete: each of those VFs was resolved, so a device outside
	// allocReps is surely no such VF's representor (one renamed or without
	// a representor just now might be, and its rules must stay).
	allocReps, complete := map[string]bool{}, true
	for _, d := range alloc.GetDevices() {
		for _, id := range d.GetDeviceIds() {
			vf, err := a.resolver.Resolve(id)
			if err != nil {
				// Not a VF (another plugin's device): nothing of ours there.
				complete = complete && (errors.Is(err, sriov.ErrNotVF) || errors.Is(err, sriov.ErrUnknownDevice) || errors.Is(err, sriov.ErrInvalidAddress))
				continue
			}
			allocReps[vf.Representor] = true
			a.mu.Lock()
			a.vfReps[vf.Representor] = id
			a.vfResource[id] = d.GetResourceName()
			a.mu.Unlock()
			if held[id] {
				continue
			}
			var want *policy.RuleSet
			if resources[d.GetResourceName()] {
				want = a.freeVF(id)
			}
			a.driverMu.Lock()
			a.mu.Lock()
			_, owned := a.vfOwner[id]
			a.mu.Unlock()
			var orphan bool
			if !owned {
				orphan, err = a.setFree(ctx, vf.Representor, want)
			}
			a.driverMu.Unlock()
			fields := logrus.Fields{"vf": id, "representor": vf.Representor, "resource": d.GetResourceName()}
			switch {
			case err != nil:
				a.metrics.errors.WithLabelValues(reasonTCRemove).Inc()
				if a.logs.allow("free " + id) {
					a.log.WithError(err).WithFields(fields).Warn("cannot set a free VF's representor")
				}
			case orphan:
				a.metrics.orphansCleaned.Inc()
				a.log.WithFields(fields).Info("VF held by no pod had rules of ours: replaced by a free VF's")
			}
		}
	}
	if complete {
		a.sweepStrayDevices(ctx, allocReps)
	}
}

// sweepStrayDevices removes our filters from every device that is neither
// the representor of a VF the kubelet can allocate (allocReps: those get a
// free VF's state above, also when they left the bridge) nor programmed for
// an attachment: a representor whose VF left the device plugin's pool, a
// port that left the bridge for another use, a netdev renamed away from an
// old VF. Nothing there is a pod's, so removing cannot open a pod. A device
// the driver is meant to program besides the pods' representors must be
// counted as owned here.
func (a *Agent) sweepStrayDevices(ctx context.Context, allocReps map[string]bool) {
	if a.links == nil {
		return
	}
	links, err := a.links()
	if err != nil {
		if a.logs.allow("links") {
			a.log.WithError(err).Warn("cannot list the node's network devices; stray filters are not checked")
		}
		return
	}
	owned := a.bridgeDevices() // the uplinks of the bridges we program
	a.mu.Lock()
	for _, ps := range a.programmed {
		for _, rep := range ps.reps {
			owned[rep] = true
		}
	}
	for rep := range a.ports {
		owned[rep] = true
	}
	a.mu.Unlock()
	for _, dev := range links {
		if allocReps[dev] || owned[dev] {
			continue
		}
		a.driverMu.Lock()
		st, err := a.driver.Dump(ctx, dev)
		if err == nil && len(st.Ours()) > 0 {
			err = a.driver.Remove(ctx, dev)
			if err == nil {
				a.metrics.orphansCleaned.Inc()
				a.log.WithField("device", dev).Info("filters of ours on a device that is no allocatable VF's representor and no attachment's: removed")
			}
		}
		a.driverMu.Unlock()
		if err != nil && !errors.Is(err, tcdriver.ErrNoDevice) {
			a.metrics.errors.WithLabelValues(reasonTCRemove).Inc()
			if a.logs.allow("stray " + dev) {
				a.log.WithError(err).WithField("device", dev).Warn("cannot remove stray filters of ours")
			}
		}
	}
}

// linkNames lists the network devices of the agent's network namespace.
func linkNames() ([]string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ifs))
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	return names, nil
}

// setFree programs a free VF's representor (want nil: none of our
// filters) and reports whether it had other filters of ours.
func (a *Agent) setFree(ctx context.Context, rep string, want *policy.RuleSet) (orphan bool, err error) {
	before, err := a.driver.Dump(ctx, rep)
	if err != nil {
		return false, err
	}
	if want == nil {
		if len(before.Ours()) == 0 {
			return false, nil
		}
		return true, a.driver.Remove(ctx, rep)
	}
	if err := a.driver.Apply(ctx, rep, want); err != nil {
		return false, err
	}
	after, err := a.driver.Dump(ctx, rep)
	if err != nil {
		return false, err
	}
	return len(before.Ours()) > 0 && before.Canonical() != after.Canonical(), nil
}
