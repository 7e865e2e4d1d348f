package app

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// addEventHandlers feeds the policy engine from the informers and enqueues
// only the attachments the engine says a change affects.
func (a *Agent) addEventHandlers() error {
	inf := a.informers
	handlers := []struct {
		informer cache.SharedIndexInformer
		handler  cache.ResourceEventHandler
	}{
		{inf.policies, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { a.onPolicy(obj) },
			UpdateFunc: func(_, obj any) { a.onPolicy(obj) },
			DeleteFunc: func(obj any) {
				if p, ok := tombstone(obj).(*mnpv1beta1.MultiNetworkPolicy); ok {
					a.enqueueAttachments(a.engine.DeletePolicy(p.Namespace, p.Name))
				}
			},
		}},
		{inf.namespaces, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { a.onNamespace(obj) },
			UpdateFunc: func(_, obj any) { a.onNamespace(obj) },
			DeleteFunc: func(obj any) {
				if ns, ok := tombstone(obj).(*corev1.Namespace); ok {
					a.enqueueAttachments(a.engine.DeleteNamespace(ns.Name))
				}
			},
		}},
		{inf.nads, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { a.onNAD(obj) },
			UpdateFunc: func(_, obj any) { a.onNAD(obj) },
			DeleteFunc: func(obj any) {
				if n, ok := tombstone(obj).(*nadv1.NetworkAttachmentDefinition); ok {
					a.enqueueAttachments(a.engine.DeleteNAD(n.Namespace, n.Name))
					a.reportUnenforcedOn(n.Namespace, n.Name)
					a.enqueueAllLocalPods()
				}
			},
		}},
		// Every pod, this node's included, feeds the engine from the
		// stripped cluster-wide cache: one source for peers and selected
		// pods alike.
		{inf.pods, cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { a.onPod(obj) },
			UpdateFunc: func(_, obj any) { a.onPod(obj) },
			DeleteFunc: func(obj any) {
				if p, ok := tombstone(obj).(*corev1.Pod); ok {
					a.enqueueAttachments(a.engine.DeletePod(p.Namespace, p.Name))
				}
			},
		}},
		// This node's pods, whole, drive the VF mapping.
		{inf.localPods, cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { a.enqueuePod(obj) },
			UpdateFunc: func(old, cur any) {
				o, ok1 := old.(*corev1.Pod)
				c, ok2 := cur.(*corev1.Pod)
				if !ok1 || !ok2 || mappingChanged(o, c) {
					a.enqueuePod(cur)
				} else if o.Annotations[nadv1.NetworkStatusAnnot] != c.Annotations[nadv1.NetworkStatusAnnot] {
					// The VFs' MACs may come from it (vfMAC).
					a.enqueuePodAttachments(c.Namespace + "/" + c.Name)
				}
			},
			DeleteFunc: func(obj any) { a.enqueuePod(tombstone(obj)) },
		}},
	}
	for _, h := range handlers {
		if _, err := h.informer.AddEventHandler(h.handler); err != nil {
			return err
		}
	}
	return nil
}

func (a *Agent) onPolicy(obj any) {
	if p, ok := obj.(*mnpv1beta1.MultiNetworkPolicy); ok {
		a.enqueueAttachments(a.engine.UpsertPolicy(p))
		a.reportUnenforced(p.Namespace + "/" + p.Name)
	}
}

// reportUnenforced records a Warning Event on a policy for each network
// its policy-for names on which it enforces nothing.
func (a *Agent) reportUnenforced(policyKey string) {
	ns, name, _ := strings.Cut(policyKey, "/")
	for _, u := range a.engine.UnenforcedNetworks(ns, name) {
		fix := "create the NetworkAttachmentDefinition, or correct the policy-for annotation"
		if !u.Missing {
			fix = fmt.Sprintf("add %q to --network-plugins %v if its pods are SR-IOV VFs", u.PluginType, a.opts.NetworkPlugins)
		}
		a.events.warn("MultiNetworkPolicy", ns, name, reasonNetworkNotEnforced,
			fmt.Sprintf("metadata.annotations[%s]: %s, so this policy enforces nothing on it; fix: %s", policy.PolicyForAnnotation, u, fix))
	}
}

func (a *Agent) onNamespace(obj any) {
	if ns, ok := obj.(*corev1.Namespace); ok {
		a.enqueueAttachments(a.engine.UpsertNamespace(ns))
	}
}

func (a *Agent) onNAD(obj any) {
	if n, ok := obj.(*nadv1.NetworkAttachmentDefinition); ok {
		a.enqueueAttachments(a.engine.UpsertNAD(n))
		a.reportUnenforcedOn(n.Namespace, n.Name)
		a.requestResync()
		// The NAD's resource or plugin type decide which local networks
		// are mapped and enforced: re-map from the cached devices.
		a.enqueueAllLocalPods()
	}
}

// reportUnenforcedOn re-checks the policies on a network whose NAD changed.
func (a *Agent) reportUnenforcedOn(namespace, name string) {
	for _, k := range a.engine.PoliciesOnNetwork(policy.NetworkRef{Namespace: namespace, Name: name}) {
		a.reportUnenforced(k)
	}
}

// requestResync asks for a resync soon, once however often it is asked.
func (a *Agent) requestResync() {
	select {
	case a.resyncSoon <- struct{}{}:
	default:
	}
}

func (a *Agent) onPod(obj any) {
	if p, ok := obj.(*corev1.Pod); ok {
		a.enqueueAttachments(a.engine.UpsertPod(p))
	}
}

func (a *Agent) enqueueAttachments(atts []policy.Attachment) {
	for _, att := range atts {
		a.attQueue.Add(att.ID())
	}
}

func (a *Agent) enqueuePodAttachments(podKey string) {
	a.mu.Lock()
	ids := append([]string(nil), a.byPod[podKey]...)
	a.mu.Unlock()
	for _, id := range ids {
		a.attQueue.Add(id)
	}
}

func (a *Agent) enqueuePod(obj any) {
	if p, ok := obj.(*corev1.Pod); ok {
		a.podQueue.Add(p.Namespace + "/" + p.Name)
	}
}

func (a *Agent) enqueueAllLocalPods() {
	for _, key := range a.informers.localPods.GetStore().ListKeys() {
		a.podQueue.Add(key)
	}
	// and pods that are gone but still hold attachments
	a.mu.Lock()
	for key := range a.byPod {
		a.podQueue.Add(key)
	}
	a.mu.Unlock()
}

// podResourcesDeadline bounds one use of the kubelet's PodResources API,
// retries included: the client retries an absent socket until its context
// ends, and a kubelet that is down must show as an error (metric, log)
// rather than as a resync that never returns.
const podResourcesDeadline = 15 * time.Second

// resync re-reads PodResources, re-maps every local pod and enqueues every
// attachment: applying an unchanged rule set reads the kernel state and
// repairs whatever differs (a filter deleted by hand, a representor that
// lost its qdisc).
func (a *Agent) resync(ctx context.Context) error {
	start := time.Now()
	lctx, cancel := context.WithTimeout(ctx, podResourcesDeadline)
	defer cancel()
	list, err := a.pr.List(lctx)
	if err != nil {
		a.metrics.errors.WithLabelValues(reasonPodResources).Inc()
		a.metrics.syncDuration.WithLabelValues("mapping", "error").Observe(time.Since(start).Seconds())
		return fmt.Errorf("listing pod resources: %w", err)
	}
	byPod := make(map[string]*podresourcesv1.PodResources, len(list))
	for _, r := range list {
		byPod[r.GetNamespace()+"/"+r.GetName()] = r
	}
	seen := map[string]bool{}
	for _, obj := range a.informers.localPods.GetStore().List() {
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			continue
		}
		key := pod.Namespace + "/" + pod.Name
		seen[key] = true
		a.mu.Lock()
		delete(a.podRes, key)
		a.mu.Unlock()
		// A pod that does not map is reported by mapPod and retried at the
		// next resync; the others are mapped regardless.
		_ = a.mapPod(pod, byPod[key])
	}
	a.mu.Lock()
	var gone []string
	for key := range a.byPod {
		if !seen[key] {
			gone = append(gone, key)
		}
	}
	ids := make([]string, 0, len(a.local)+len(a.programmed))
	for id := range a.local {
		ids = append(ids, id)
	}
	for id := range a.programmed {
		ids = append(ids, id)
	}
	a.mu.Unlock()
	for _, key := range gone {
		a.setPodAttachments(key, nil)
	}
	held := map[string]bool{}
	for _, r := range list {
		for id := range heldDevices(r) {
			held[id] = true
		}
	}
	a.sweepFreeVFs(ctx, held)
	for _, id := range ids {
		a.attQueue.Add(id)
	}
	a.metrics.syncDuration.WithLabelValues("mapping", "ok").Observe(time.Since(start).Seconds())
	a.metrics.lastResync.SetToCurrentTime()
	return nil
}

func (a *Agent) processNextPod(ctx context.Context) bool {
	key, shutdown := a.podQueue.Get()
	if shutdown {
		return false
	}
	defer a.podQueue.Done(key)
	if err := a.syncPod(ctx, key); err != nil {
		a.log.WithError(err).WithField("pod", key).Debug("pod mapping failed; retrying")
		a.podQueue.AddRateLimited(key)
		return true
	}
	a.podQueue.Forget(key)
	return true
}

// syncPod refreshes the VF mapping of one local pod.
func (a *Agent) syncPod(ctx context.Context, key string) error {
	obj, exists, err := a.informers.localPods.GetStore().GetByKey(key)
	if err != nil {
		return err
	}
	pod, _ := obj.(*corev1.Pod)
	if !exists || pod == nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		// Gone or finished: its VF is released, so are its rules.
		a.mu.Lock()
		delete(a.podRes, key)
		a.mu.Unlock()
		a.setPodAttachments(key, nil)
		return nil
	}
	a.mu.Lock()
	cached, ok := a.podRes[key]
	a.mu.Unlock()
	var res *podresourcesv1.PodResources
	if ok && cached.uid == pod.UID {
		res = cached.res
	} else if a.needsDevices(pod) {
		gctx, cancel := context.WithTimeout(ctx, podResourcesDeadline)
		res, err = a.pr.Get(gctx, pod.Namespace, pod.Name)
		cancel()
		if err != nil && !errors.Is(err, podresources.ErrPodNotFound) {
			a.metrics.errors.WithLabelValues(reasonPodResources).Inc()
			return err
		}
	}
	if err := a.mapPod(pod, res); err != nil && pod.Status.Phase == corev1.PodRunning {
		// A running pod whose devices don't map yet: the kubelet may still
		// be admitting it; retry with backoff (and at every resync).
		return err
	}
	return nil
}

// needsDevices reports whether the pod asks for secondary networks, or
// for a device of an enforced network's resource (a DPDK pod may use its
// VF without any network): its VFs must be known to open or police them.
func (a *Agent) needsDevices(pod *corev1.Pod) bool {
	if strings.TrimSpace(pod.Annotations[nadv1.NetworkAttachmentAnnot]) != "" {
		return true
	}
	resources := a.enforcedResources()
	for _, c := range pod.Spec.Containers {
		for name := range c.Resources.Requests {
			if resources[string(name)] {
				return true
			}
		}
	}
	return false
}

// mapPod maps a local pod's networks to the VFs the kubelet assigned it and
// replaces its attachments. What a running pod is attached to was fixed by
// the CNI when it started, and the kubelet never changes a pod's devices,
// so an attachment, once mapped for a pod UID, stays as it is until the pod
// is gone, finished, or the kubelet no longer lists the VF for it (res says
// so): a later edit of the networks annotation or of a NAD cannot re-wire
// the pod, and one the agent cannot read must not take its rules off
// (keepMapped).
// The pod's other VFs of enforced resources are opened when it mapped, or
// isolated both ways when it did not (otherVFs). res nil means the kubelet
// said nothing about the pod's devices. The error, reported on the pod
// when it runs, is retried.
func (a *Agent) mapPod(pod *corev1.Pod, res *podresourcesv1.PodResources) error {
	key := pod.Namespace + "/" + pod.Name
	mapped, err := a.mapper.Map(pod, a.lookupNAD, res)
	var next []*localAttachment
	if err == nil {
		next = a.enforcedAttachments(pod, mapped)
	}
	next = a.keepMapped(pod, res, next, err)
	if q := a.otherVFs(pod, res, next, err == nil); q != nil {
		next = append(next, q)
	}
	if err != nil {
		a.reportMappingError(pod, err, len(next) > 0)
	}
	a.mu.Lock()
	if err == nil && res != nil {
		a.podRes[key] = cachedResources{uid: pod.UID, res: res}
	} else {
		delete(a.podRes, key)
	}
	a.mu.Unlock()
	a.setPodAttachments(key, next)
	return err
}

// enforcedAttachments are the mapped networks the agent enforces, one
// attachment per network (two VFs when the pod attached it twice). A
// network whose NAD config does not parse may be one: it is included, and
// held until the config parses (ruleSetFor).
func (a *Agent) enforcedAttachments(pod *corev1.Pod, mapped []podresources.Attachment) []*localAttachment {
	byID := map[string]*localAttachment{}
	var order []string
	for _, m := range mapped {
		ref := policy.NetworkRef{Namespace: m.NetworkNamespace, Name: m.NetworkName}
		if !a.engine.Enforced(ref) && !a.nadUnparsable(ref) {
			continue
		}
		att := policy.Attachment{PodNamespace: pod.Namespace, PodName: pod.Name, Network: ref, Interface: m.Interface}
		id := att.ID()
		la := byID[id]
		if la == nil {
			la = &localAttachment{att: att, podUID: pod.UID}
			byID[id] = la
			order = append(order, id)
		} else {
			la.att.Interface += "," + m.Interface
		}
		la.devices = append(la.devices, m.DeviceID)
	}
	atts := make([]*localAttachment, 0, len(order))
	for _, id := range order {
		la := byID[id]
		la.att.Key = strings.Join(la.devices, ",")
		atts = append(atts, la)
	}
	return atts
}

func (a *Agent) reportMappingError(pod *corev1.Pod, err error, protected bool) {
	if pod.Status.Phase != corev1.PodRunning {
		return // the kubelet may still be admitting it
	}
	reason := reasonNetworksAnnotation
	fix := "fix the pod's " + nadv1.NetworkAttachmentAnnot + " annotation or create the NetworkAttachmentDefinitions it names"
	if errors.Is(err, podresources.ErrDeviceCountMismatch) {
		reason = reasonDeviceCountMismatch
		fix = "request one device of the resource per network on it (resources.requests) and recreate the pod"
	}
	effect := "no VF of it is known, so nothing is programmed for it"
	if protected {
		effect = "its VFs keep the rules they had, or are isolated both ways if they had none"
	}
	a.metrics.errors.WithLabelValues(reason).Inc()
	a.events.warn("Pod", pod.Namespace, pod.Name, reason, fmt.Sprintf("%v; %s; fix: %s", err, effect, fix))
	if a.logs.allow("map " + pod.Namespace + "/" + pod.Name) {
		a.log.WithError(err).WithField("pod", pod.Namespace+"/"+pod.Name).Warn("cannot map the pod's networks to its VFs; " + effect)
	}
}

// nadUnparsable: the network's NAD exists and its plugin type cannot be read.
func (a *Agent) nadUnparsable(ref policy.NetworkRef) bool {
	nad, err := a.lookupNAD(ref.Namespace, ref.Name)
	if err != nil {
		return false
	}
	_, err = policy.NADPluginType(nad)
	return err != nil
}

func (a *Agent) lookupNAD(namespace, name string) (*nadv1.NetworkAttachmentDefinition, error) {
	obj, ok, err := a.informers.nads.GetStore().GetByKey(namespace + "/" + name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("NetworkAttachmentDefinition %s/%s not found", namespace, name)
	}
	n, _ := obj.(*nadv1.NetworkAttachmentDefinition)
	if n == nil {
		return nil, fmt.Errorf("NetworkAttachmentDefinition %s/%s: unexpected object %T", namespace, name, obj)
	}
	return n, nil
}

// setPodAttachments replaces the attachments of one local pod, updates the
// engine's set and enqueues what changed.
func (a *Agent) setPodAttachments(podKey string, atts []*localAttachment) {
	a.mu.Lock()
	prev := map[string]*localAttachment{}
	for _, id := range a.byPod[podKey] {
		la := a.local[id]
		if la == nil {
			continue
		}
		prev[id] = la
		for _, vf := range la.devices {
			if a.vfOwner[vf] == id {
				delete(a.vfOwner, vf)
			}
		}
		delete(a.local, id)
	}
	var changed []string
	ids := make([]string, 0, len(atts))
	for _, la := range atts {
		id := la.att.ID()
		ids = append(ids, id)
		if p := prev[id]; p == nil || !sameAttachment(p, la) {
			changed = append(changed, id)
		}
		delete(prev, id)
		a.local[id] = la
		for _, vf := range la.devices {
			a.vfOwner[vf] = id
		}
	}
	for id := range prev { // attachments the pod no longer has
		changed = append(changed, id)
	}
	if len(ids) == 0 {
		delete(a.byPod, podKey)
	} else {
		a.byPod[podKey] = ids
	}
	var all []policy.Attachment
	if len(changed) > 0 {
		all = make([]policy.Attachment, 0, len(a.local))
		for _, la := range a.local {
			if la.kind == vfsOnNetwork { // the others are not the policies' business
				all = append(all, la.att)
			}
		}
	}
	a.mu.Unlock()
	if len(changed) == 0 {
		return
	}
	a.engine.SetAttachments(all)
	a.updateStateGauge()
	for _, id := range changed {
		a.attQueue.Add(id)
	}
}

func sameAttachment(x, y *localAttachment) bool {
	return x.att == y.att && x.podUID == y.podUID && slices.Equal(x.devices, y.devices)
}

func (a *Agent) processNextAttachment(ctx context.Context) bool {
	id, shutdown := a.attQueue.Get()
	if shutdown {
		return false
	}
	a.processAttachment(ctx, id)
	return true
}

func (a *Agent) processAttachment(ctx context.Context, id string) {
	defer a.attQueue.Done(id)
	start := time.Now()
	err := a.syncAttachment(ctx, id)
	result := "ok"
	if err != nil {
		result = "error"
		if a.logs.allow("attachment " + id) {
			a.log.WithError(err).WithField("attachment", id).Warn("programming failed; retrying with backoff (logged at most every 10s)")
		}
		a.attQueue.AddRateLimited(id)
	} else {
		a.attQueue.Forget(id)
	}
	a.metrics.syncDuration.WithLabelValues("attachment", result).Observe(time.Since(start).Seconds())
	a.updateStateGauge()
}

// syncAttachment computes one attachment's rule set and programs it for
// each of its VFs: a representor on a bridge by re-applying the bridge
// (syncBridge), one on no bridge on the representor alone (the old
// placement); for an attachment that is gone, it closes the representors
// no other attachment took over. An attachment whose input is unusable is
// held (ruleSetFor): it keeps its last good rules, or is isolated both
// ways, and waits for an input change.
func (a *Agent) syncAttachment(ctx context.Context, id string) error {
	a.mu.Lock()
	la := a.local[id]
	a.mu.Unlock()
	if la == nil {
		return a.removeAttachment(ctx, id)
	}
	log := a.log.WithField("attachment", la.att.String())
	rs, held := a.ruleSetFor(la)
	var errs []error
	refused := false // --tc-offload=required closed a port of it
	reps := map[string]string{}
	type alone struct{ vf, rep string }
	var single []alone              // on no bridge, or closed apart from it
	bridges := map[string][]alone{} // its ports on each bridge
	// touch marks a bridge to re-apply that none of its ports is on.
	touch := func(br string) {
		if _, ok := bridges[br]; !ok {
			bridges[br] = nil
		}
	}
	for i, vfPCI := range la.devices {
		vf, err := a.resolver.Resolve(vfPCI)
		if err != nil {
			reason := reasonVFNotResolved
			if errors.Is(err, sriov.ErrNoRepresentor) {
				reason = reasonRepresentorNotFound
			}
			a.metrics.errors.WithLabelValues(reason).Inc()
			a.events.warn("Pod", la.att.PodNamespace, la.att.PodName, reason,
				fmt.Sprintf("network %s: VF %s: %v; the representor keeps the rules it had, retried with backoff; fix: %s", la.att.Network, vfPCI, err, resolveFix(reason)))
			errs = append(errs, err)
			continue
		}
		rep := vf.Representor
		br, err := a.bridgeOf(rep)
		if err != nil {
			a.metrics.errors.WithLabelValues(reasonBridgeTopology).Inc()
			a.events.warn("Pod", la.att.PodNamespace, la.att.PodName, reasonBridgeTopology,
				fmt.Sprintf("network %s: VF %s: %v; the representor keeps the rules it had, retried with backoff", la.att.Network, vfPCI, err))
			errs = append(errs, err)
			continue
		}
		if br == "" {
			a.mu.Lock()
			was := a.ports[rep]
			a.mu.Unlock()
			a.setPort(rep, nil)
			if was != nil && !was.closed {
				touch(was.bridge) // it left: re-apply without it
			}
			a.mu.Lock()
			first := !a.aloneLogged[rep]
			a.aloneLogged[rep] = true
			a.mu.Unlock()
			if first {
				log.WithFields(logrus.Fields{"representor": rep, "vf": vfPCI}).Info("representor on no bridge: programmed alone (old placement: the pod's ingress on its egress hook, enforced in software only)")
			}
			single = append(single, alone{vfPCI, rep})
			continue
		}
		w, err := a.bridgePort(la, i, vf, br, rs)
		if err != nil {
			a.reportMAC(la, err)
			errs = append(errs, err)
			single = append(single, alone{vfPCI, rep})
		}
		a.mu.Lock()
		was := a.ports[rep]
		a.mu.Unlock()
		a.setPort(rep, w)
		if was != nil && was.bridge != br && !was.closed {
			touch(was.bridge)
		}
		if w.closed {
			touch(br) // closed alone first, then the bridge applied without it
		} else {
			bridges[br] = append(bridges[br], alone{vfPCI, rep})
		}
	}
	// Ports programmed alone first: a port that leaves a bridge program
	// (closed for its MAC) is closed on its own before the bridge is
	// applied without it, so that it is never open in between (the driver
	// leaves a port programmed alone since the bridge's last apply as it
	// is).
	for _, p := range single {
		a.mu.Lock()
		w := a.ports[p.rep]
		a.mu.Unlock()
		want := rs
		if w != nil && w.closed {
			want = w.rs
		}
		var err error
		a.driverMu.Lock()
		if want != nil {
			err = a.driver.Apply(ctx, p.rep, want)
		} else {
			err = a.programHeld(ctx, p.rep, la)
		}
		a.driverMu.Unlock()
		if nih, ok := notInHardware(err); ok {
			a.reportOffloadRefused(la, p.vf, p.rep, "", nih)
			errs = append(errs, err)
			reps[p.vf] = p.rep // closed by the driver: ours
			refused = true
			continue
		}
		if err != nil {
			reason := reasonTCProgramming
			if errors.Is(err, tcdriver.ErrNoDevice) {
				reason = reasonRepresentorNotFound
			}
			a.metrics.errors.WithLabelValues(reason).Inc()
			a.events.warn("Pod", la.att.PodNamespace, la.att.PodName, reason,
				fmt.Sprintf("network %s: VF %s representor %s: %v; its previous rules stay, retried with backoff; fix: %s", la.att.Network, p.vf, p.rep, err, resolveFix(reason)))
			errs = append(errs, err)
			continue
		}
		reps[p.vf] = p.rep
		if want != nil && (w == nil || !w.closed) {
			log.WithFields(logrus.Fields{"representor": p.rep, "vf": p.vf, "held": held,
				"ingressIsolated": want.Ingress.Isolated, "egressIsolated": want.Egress.Isolated}).Debug("programmed")
		}
	}
	for _, br := range mapKeys(bridges) {
		perPort, err := a.syncBridge(ctx, br)
		for _, p := range bridges[br] {
			if _, ok := notInHardware(perPort[p.rep]); ok {
				// Reported by syncBridge (markOffloadRefused).
				errs = append(errs, fmt.Errorf("bridge %s: representor %s: %w", br, p.rep, perPort[p.rep]))
				reps[p.vf] = p.rep // closed by the driver: ours
				refused = true
			} else if e := perPort[p.rep]; e != nil {
				a.metrics.errors.WithLabelValues(reasonTCProgramming).Inc()
				a.events.warn("Pod", la.att.PodNamespace, la.att.PodName, reasonTCProgramming,
					fmt.Sprintf("network %s: VF %s representor %s on bridge %s: %v; the port keeps its previous rules, or is closed if it had none; retried with backoff", la.att.Network, p.vf, p.rep, br, e))
				errs = append(errs, fmt.Errorf("bridge %s: representor %s: %w", br, p.rep, e))
			} else if err == nil {
				reps[p.vf] = p.rep
				if rs != nil {
					log.WithFields(logrus.Fields{"representor": p.rep, "vf": p.vf, "bridge": br, "held": held,
						"ingressIsolated": rs.Ingress.Isolated, "egressIsolated": rs.Egress.Isolated}).Debug("programmed")
				}
			}
		}
		if err != nil {
			reason := reasonTCProgramming
			if errors.Is(err, tcdriver.ErrNoDevice) {
				reason = reasonRepresentorNotFound
			}
			a.metrics.errors.WithLabelValues(reason).Inc()
			var own []string
			for _, p := range bridges[br] {
				own = append(own, p.rep)
			}
			a.events.warn("Pod", la.att.PodNamespace, la.att.PodName, reason,
				fmt.Sprintf("network %s: bridge %s (port %s): %v; its ports keep their previous rules, retried with backoff; fix: %s", la.att.Network, br, strings.Join(own, ","), err, resolveFix(reason)))
			errs = append(errs, err)
		}
	}
	// A VF this attachment no longer has, or a representor that is no
	// longer its VF's: remove our rules there. A failed Apply keeps the
	// representor's previous rules (fail closed), so nothing else is removed.
	a.mu.Lock()
	stale := map[string]string{}
	var good *policy.RuleSet
	if ps := a.programmed[id]; ps != nil {
		good = ps.good
		for vf, rep := range ps.reps {
			if now, ok := reps[vf]; (ok && now != rep) || !slices.Contains(la.devices, vf) {
				stale[vf] = rep
			} else if !ok {
				reps[vf] = rep // failed this time; its last rules stay and are ours
			}
		}
	}
	a.mu.Unlock()
	if err := a.removeReps(ctx, id, stale); err != nil {
		a.events.warn("Pod", la.att.PodNamespace, la.att.PodName, reasonTCRemove, err.Error())
		errs = append(errs, err)
	}
	if rs != nil {
		a.writePodRules(la, rs, reps)
	}
	state := stateProgrammed
	switch {
	case refused:
		state = stateRefused
	case len(errs) > 0:
		state = stateFailed
	case held:
		state = stateHeld
	}
	if !held && len(errs) == 0 {
		if err := a.cutConnections(ctx, la, good, rs); err != nil {
			errs = append(errs, err) // retried: good stays the old rules
		} else {
			good = rs
		}
	}
	a.mu.Lock()
	a.programmed[id] = &programmedState{reps: reps, state: state, good: good}
	a.mu.Unlock()
	return errors.Join(errs...)
}

// cutConnections removes the conntrack entries of the pod's established
// connections that the new rule set denies, once it is programmed: else
// they would pass as established until they end. Nothing is cut for a
// first rule set (after a restart the kernel's rules were the last ones).
func (a *Agent) cutConnections(ctx context.Context, la *localAttachment, old, rs *policy.RuleSet) error {
	if a.conntrack == nil || old == nil || reflect.DeepEqual(old, rs) {
		return nil
	}
	ips := a.engine.PodIPs(la.att.PodNamespace, la.att.PodName, la.att.Network)
	n, err := a.conntrack.Cut(ctx, ips, rs)
	a.metrics.connectionsCut.Add(float64(n))
	if err != nil {
		a.metrics.errors.WithLabelValues(reasonConntrack).Inc()
		a.events.warn("Pod", la.att.PodNamespace, la.att.PodName, reasonConntrack,
			fmt.Sprintf("network %s: %v; connections the new rules deny may continue until this succeeds (retried); fix: check that the kernel has nf_conntrack_netlink", la.att.Network, err))
		return err
	}
	if n > 0 {
		a.log.WithFields(logrus.Fields{"attachment": la.att.String(), "connections": n}).Info("cut established connections the new rules deny")
	}
	return nil
}

// resolveFix is what a user can do about a VF or TC error.
func resolveFix(reason string) string {
	switch reason {
	case reasonRepresentorNotFound:
		return "put the PF in switchdev mode and check that the VF's representor netdev exists (ip -d link)"
	case reasonVFNotResolved:
		return "the device plugin resource must hold VFs of a switchdev PF; check the NAD's resourceName"
	default:
		return "see the agent's log and `tc filter show dev <representor> ingress/egress`; check the kernel has cls_flower and act_ct"
	}
}

// ruleSetFor returns the rule set to program for an attachment and whether
// it is held: its input is unusable (the pod's VFs could not be mapped,
// its network's NAD is gone or no longer enforced, or the NAD's config does
// not parse), so it keeps its last good rules — nil when this run has none
// (programHeld) — or, unmapped, is isolated both ways. Every reason is
// reported with an Event on the object at fault.
func (a *Agent) ruleSetFor(la *localAttachment) (rs *policy.RuleSet, held bool) {
	id := la.att.ID()
	switch la.kind {
	case vfsUnmapped:
		return a.isolatedRuleSet(la.att), true
	case vfsOpen:
		return &policy.RuleSet{Attachment: la.att}, false
	}
	if !a.engine.Enforced(la.att.Network) {
		if p := a.networkProblem(la.att.PodNamespace, la.att.PodName, la.att.Network); p != nil {
			a.metrics.errors.WithLabelValues(reasonInvalidInput).Inc()
			a.events.warn(p.kind, p.namespace, p.name, reasonInvalidInput, fmt.Sprintf(
				"%s: %s; attachment %s keeps its last rules (isolated both ways if none); fix: %s", p.field, p.what, la.att, p.fix))
		}
		return a.heldRuleSet(id), true
	}
	rs, err := a.engine.Compute(la.att)
	if err != nil && !errors.Is(err, policy.ErrUnknownPod) { // the pod cache is a moment behind: held until it catches up
		a.reportComputeErrors(la, err)
	}
	if rs == nil {
		return a.heldRuleSet(id), true
	}
	return rs, false
}

// removeAttachment removes our rules from every representor a gone
// attachment programmed.
func (a *Agent) removeAttachment(ctx context.Context, id string) error {
	a.mu.Lock()
	var reps map[string]string
	if ps := a.programmed[id]; ps != nil {
		reps = ps.reps
	}
	a.mu.Unlock()
	if err := a.removeReps(ctx, id, reps); err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.programmed, id)
	a.mu.Unlock()
	a.removePodRules(id)
	return nil
}

// removeReps leaves the representors (VF PCI → netdev) that attachment id
// programmed as a free VF's are: closed, isolated both ways (freeVF).
// Where the VF now belongs to another attachment it does nothing: the new
// owner's Apply replaces the rules without a moment unprotected. A
// representor on a bridge is first closed alone, then the bridge is
// applied without it (every other port drops the pod's section; the
// driver leaves a port programmed alone since as it is), so that it is
// never open in between.
func (a *Agent) removeReps(ctx context.Context, id string, reps map[string]string) error {
	var errs []error
	for vf, rep := range reps {
		a.mu.Lock()
		owner, taken := a.vfOwner[vf]
		w := a.ports[rep]
		if w != nil && w.id == id && (!taken || owner == id) {
			delete(a.ports, rep)
		} else {
			w = nil
		}
		a.mu.Unlock()
		a.driverMu.Lock()
		a.mu.Lock()
		owner, taken = a.vfOwner[vf]
		a.mu.Unlock()
		reused := taken && owner != id
		var err error
		if !reused {
			err = a.driver.Apply(ctx, rep, a.freeVF(vf))
		}
		a.driverMu.Unlock()
		if err != nil && !errors.Is(err, tcdriver.ErrNoDevice) {
			a.metrics.errors.WithLabelValues(reasonTCRemove).Inc()
			errs = append(errs, fmt.Errorf("closing representor %s of VF %s released by %s: %w", rep, vf, id, err))
			continue
		}
		if w != nil && !w.closed {
			if _, err := a.syncBridge(ctx, w.bridge); err != nil {
				a.metrics.errors.WithLabelValues(reasonTCRemove).Inc()
				errs = append(errs, fmt.Errorf("bridge %s without representor %s of VF %s released by %s: %w", w.bridge, rep, vf, id, err))
			}
		}
		a.log.WithFields(logrus.Fields{"attachment": id, "representor": rep, "vf": vf, "reusedBy": owner}).Info("VF released; closed until its next pod's rules are in place")
	}
	return errors.Join(errs...)
}

// reportComputeErrors logs the problems the policy core found and records
// an Event on each object at fault (the policy, the pod, the NAD), saying
// what the agent does about it and how to fix it.
func (a *Agent) reportComputeErrors(la *localAttachment, err error) {
	inputs, other := inputErrors(err)
	for _, ie := range inputs {
		a.metrics.errors.WithLabelValues(reasonInvalidInput).Inc()
		a.events.warn(ie.Kind, ie.Namespace, ie.Name, reasonInvalidInput,
			fmt.Sprintf("%s: %v (%s; fix: correct %s)", ie.Field, ie.Err, inputEffect(ie), ie.Field))
	}
	for _, e := range other {
		a.metrics.errors.WithLabelValues(reasonInvalidInput).Inc()
		a.events.warn("Pod", la.att.PodNamespace, la.att.PodName, reasonInvalidInput, e.Error())
	}
	a.log.WithError(err).WithField("attachment", la.att.String()).Warn("invalid input; the rule set fails closed")
}

// inputEffect is what an invalid field does to the rules
// (docs/policy-semantics.md §8).
func inputEffect(ie *policy.InputError) string {
	switch {
	case ie.Kind == "NetworkAttachmentDefinition":
		return "the attachments on this network keep their last rules, or are isolated both ways if they have none"
	case ie.Kind == "Pod":
		return "as a peer the pod matches nothing on that network"
	case strings.Contains(ie.Field, policy.PolicyForAnnotation):
		return "that entry is ignored; the policy applies to the networks of its valid entries"
	default:
		return "that part allows nothing"
	}
}

func (a *Agent) updateStateGauge() {
	counts := map[string]int{}
	a.mu.Lock()
	for id := range a.local {
		state := statePending
		if ps := a.programmed[id]; ps != nil && ps.state != "" {
			state = ps.state
		}
		counts[state]++
	}
	a.mu.Unlock()
	for _, s := range attachmentStates {
		a.metrics.attachments.WithLabelValues(s).Set(float64(counts[s]))
	}
}

// AttachmentStatus is one local attachment as the agent sees it, for tests
// and debugging.
type AttachmentStatus struct {
	ID           string
	Devices      []string
	Representors []string
	State        string
}

// Attachments returns the local attachments sorted by ID.
func (a *Agent) Attachments() []AttachmentStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]AttachmentStatus, 0, len(a.local))
	for id, la := range a.local {
		st := AttachmentStatus{ID: id, Devices: append([]string(nil), la.devices...), State: statePending}
		if ps := a.programmed[id]; ps != nil {
			st.State = ps.state
			for _, rep := range ps.reps {
				st.Representors = append(st.Representors, rep)
			}
			sort.Strings(st.Representors)
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
