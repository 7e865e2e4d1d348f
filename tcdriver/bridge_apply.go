package tcdriver

import (
	"context"
	"errors"
	"fmt"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// ApplyBridge makes every port of the bridge enforce the bridge placement
// (see Bridge). Each port changes as one make-before-break transaction of
// its ingress hook, as Apply does for a representor: a frame sees the old
// or the new rules of the port it enters by, never a mix and never none. A
// pod joining or leaving adds or removes its section and dispatch entry in
// place on every port; a changed rule set is changed in place when only
// peers or only ports of rules differ, by a generation switch of each port
// otherwise. Filters of the representor placement (Apply), on either hook,
// are replaced by the same transaction (the egress hook after the ingress
// one enforces the new rules).
//
// A port whose rule set cannot be enforced exactly (invalid, no MAC while
// its ingress is isolated, a conntrack zone another network uses) keeps the
// rule set it had, or gets a closed one when it had none; the others are
// applied. Ports that were on the bridge at the last ApplyBridge and are not
// any more lose our filters. The error lists every port it concerns.
//
// With --tc-offload=required, a port whose pod's filters (on its own port,
// and its sections on the others) are not all in hardware after the change
// is closed the same way and the bridge applied again; its error is a
// *PortError wrapping a *NotInHardwareError. The pod's rules ran in
// software in between: correct verdicts on the slow path, never wider.
func (r *reconciler) ApplyBridge(ctx context.Context, b *Bridge) error {
	start := r.stats
	defer func() { r.last = r.stats.sub(start) }()
	invalid, whole := PortErrors(ValidateBridge(b))
	if len(whole) > 0 {
		// The bridge as a whole cannot be enforced: every port keeps
		// what it has.
		return fmt.Errorf("bridge %s: refused, every port keeps its rules: %w", b.Name, errors.Join(whole...))
	}
	b, refused := r.enforceable(b, invalid)
	errs := refused
	now := map[string]bool{}
	failed := map[string]bool{}
	portErr := map[string]error{}
	// skip: ports --tc-offload=required does not judge (refused already,
	// or failed: they keep what they had).
	skip := map[string]bool{}
	rp, _ := PortErrors(errors.Join(refused...))
	for dev := range rp {
		skip[dev] = true
	}
	// probe: ports refused at their last apply, closed again first; each
	// takes its rules only once its closed filters are in hardware (a
	// device that still cannot offload never runs them in software).
	probe := map[string]bool{}
	real := map[string]*policy.RuleSet{}
	refusedHW := map[string]bool{}
	for i := range b.Ports {
		pt := &b.Ports[i]
		if r.opts.Offload == OffloadRequired && !skip[pt.Dev] && r.wasRefused(pt.Dev) && !closedLike(pt.RuleSet) {
			_, hasMAC := MACOf(pt.MAC)
			probe[pt.Dev], real[pt.Dev] = true, pt.RuleSet
			pt.RuleSet = closedRuleSet(pt.RuleSet.Attachment, hasMAC)
		}
	}
	for pass := 0; pass <= len(b.Ports)+1; pass++ {
		failed = map[string]bool{}
		for _, dev := range portOrder(b) {
			now[dev] = true
			if err := ctx.Err(); err != nil {
				return errors.Join(append(errs, err)...)
			}
			delete(portErr, dev)
			if err := r.applyPort(b, dev); err != nil {
				// A port that is gone sends nothing: it does not hold
				// back the others' egress hooks.
				if !errors.Is(err, ErrNoDevice) {
					failed[dev] = true
				}
				skip[dev] = true
				portErr[dev] = fmt.Errorf("bridge %s: %w", b.Name, err)
			}
		}
		// --tc-offload=required: a pod whose filters are not all in
		// hardware is closed like a port that cannot be enforced, and
		// every port applied again (its sections are on the others).
		refusals := r.offloadRefusals(b, skip, probe)
		changed := false
		for i := range b.Ports {
			pt := &b.Ports[i]
			nih := refusals[pt.Dev]
			switch {
			case probe[pt.Dev] && skip[pt.Dev]:
				continue // its apply failed: not judged, stays closed
			case probe[pt.Dev] && nih == nil:
				// Its device takes its closed filters: try its rules.
				pt.RuleSet, changed = real[pt.Dev], true
				continue
			case nih == nil:
				continue
			case !probe[pt.Dev]:
				_, hasMAC := MACOf(pt.MAC)
				pt.RuleSet, changed = closedRuleSet(pt.RuleSet.Attachment, hasMAC), true
			}
			skip[pt.Dev], refusedHW[pt.Dev] = true, true
			errs = append(errs, fmt.Errorf("bridge %s: %w", b.Name, &PortError{Dev: pt.Dev, Err: nih}))
		}
		probe = nil
		if !changed {
			break
		}
	}
	if r.opts.Offload == OffloadRequired {
		for _, pt := range b.Ports {
			if !failed[pt.Dev] && rp[pt.Dev] == nil {
				r.setRefused(pt.Dev, refusedHW[pt.Dev])
			}
		}
	}
	for _, dev := range portOrder(b) {
		if e := portErr[dev]; e != nil {
			errs = append(errs, e)
		}
	}
	// Then what the representor placement left on egress hooks: a pod's
	// ingress there stays enforced (in software) until every port
	// dispatches to its section, so only once every port took its program.
	for _, dev := range portOrder(b) {
		if len(failed) > 0 {
			break
		}
		if err := r.clearEgress(dev); err != nil {
			errs = append(errs, fmt.Errorf("bridge %s: %w", b.Name, err))
		}
	}
	r.bridgesMu.Lock()
	prev := r.bridges[b.Name]
	if r.bridges == nil {
		r.bridges = map[string]*Bridge{}
	}
	r.bridges[b.Name] = b
	r.bridgesMu.Unlock()
	if prev != nil {
		for _, dev := range portOrder(prev) {
			// A port programmed alone (Apply) since it left is the
			// caller's: it closed it before applying the bridge without it.
			if !now[dev] && !r.isAlone(dev) {
				if err := r.Remove(ctx, dev); err != nil {
					errs = append(errs, fmt.Errorf("bridge %s: port %s left it: %w", b.Name, dev, err))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// Bridges returns the bridges as last enforced (with the rule set each
// port actually enforces), for the counters collector. Safe to call
// concurrently.
func (r *reconciler) Bridges() []*Bridge {
	r.bridgesMu.Lock()
	defer r.bridgesMu.Unlock()
	out := make([]*Bridge, 0, len(r.bridges))
	for _, b := range r.bridges {
		out = append(out, b)
	}
	return out
}

// isAlone reports whether dev was last programmed alone (Apply), not as
// a port of a bridge.
func (r *reconciler) isAlone(dev string) bool {
	r.bridgesMu.Lock()
	defer r.bridgesMu.Unlock()
	return r.alone[dev]
}

func (r *reconciler) setAlone(dev string, alone bool) {
	r.bridgesMu.Lock()
	defer r.bridgesMu.Unlock()
	if r.alone == nil {
		r.alone = map[string]bool{}
	}
	if alone {
		r.alone[dev] = true
	} else {
		delete(r.alone, dev)
	}
}

// RemoveBridge removes our filters from every port of the bridge as of the
// last ApplyBridge.
func (r *reconciler) RemoveBridge(ctx context.Context, name string) error {
	var errs []error
	r.bridgesMu.Lock()
	b := r.bridges[name]
	delete(r.bridges, name)
	r.bridgesMu.Unlock()
	if b == nil {
		return nil
	}
	for _, dev := range portOrder(b) {
		if err := r.Remove(ctx, dev); err != nil {
			errs = append(errs, fmt.Errorf("bridge %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// enforceable returns the bridge with each port that cannot be enforced
// as given (invalid: ValidateBridge's per-port errors, or a conntrack
// zone another network uses) replaced by what it keeps, and the reasons.
func (r *reconciler) enforceable(b *Bridge, invalid map[string]error) (*Bridge, []error) {
	out := &Bridge{Name: b.Name, Uplinks: b.Uplinks, Ports: make([]BridgePort, 0, len(b.Ports))}
	var errs []error
	applied := r.Applied()
	refuse := func(pt *BridgePort, err error) {
		errs = append(errs, fmt.Errorf("bridge %s: %w", b.Name, &PortError{Dev: pt.Dev, Err: fmt.Errorf("refusing rule set, %s: %w", r.fallback(pt, applied), err)}))
	}
	for _, pt := range b.Ports {
		if err, bad := invalid[pt.Dev]; bad {
			refuse(&pt, err)
		} else if other, clash := zoneConflict(r.opts.Zones, pt.RuleSet, applied, pt.Dev); clash {
			refuse(&pt, fmt.Errorf("networks %s and %s map to the same conntrack zone %d of --ct-zone-range %s and would share connection state; choose another range",
				pt.RuleSet.Attachment.Network, other, r.opts.Zones.Of(pt.RuleSet.Attachment.Network), r.opts.Zones))
		}
		out.Ports = append(out.Ports, pt)
	}
	return out, errs
}

// PortErrors splits an error of ValidateBridge or ApplyBridge into the
// ports it names (a *PortError each: a port that cannot be enforced as
// given) and the rest (the bridge as a whole, the kernel).
func PortErrors(err error) (ports map[string]error, rest []error) {
	ports = map[string]error{}
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else if err != nil {
		errs = []error{err}
	}
	for _, e := range errs {
		var pe *PortError
		if errors.As(e, &pe) {
			ports[pe.Dev] = pe.Err
		} else {
			rest = append(rest, e)
		}
	}
	return ports, rest
}

// fallback replaces pt's rule set by the one applied before, or a closed
// one, and says which.
func (r *reconciler) fallback(pt *BridgePort, applied map[string]*policy.RuleSet) string {
	if prev := applied[pt.Dev]; prev != nil && validatePort(&BridgePort{Dev: pt.Dev, MAC: pt.MAC, RuleSet: prev}) == nil {
		pt.RuleSet = prev
		return "previous rules kept"
	}
	closed := &policy.RuleSet{Egress: policy.DirectionRules{Isolated: true, Stateful: true}}
	if pt.RuleSet != nil {
		closed.Attachment = pt.RuleSet.Attachment
	}
	if _, ok := MACOf(pt.MAC); ok {
		closed.Ingress = closed.Egress
	}
	pt.RuleSet = closed
	return "closed until it can be enforced"
}

// applyPort reconciles one port: its ingress hook gets its bridge program
// (keeping the section numbers installed receivers have), its egress hook
// nothing.
func (r *reconciler) applyPort(b *Bridge, dev string) error {
	ok, err := r.k.hasClsact(dev)
	if err != nil {
		return err
	}
	var read [2]*hookState
	var sections map[MAC]int
	if ok {
		if p, pins := r.k.(pinner); pins {
			unpin, err := p.pin(dev)
			if err != nil {
				return err
			}
			defer unpin()
		}
		if read[HookIngress], err = r.readHook(dev, HookIngress); err != nil {
			return err
		}
		sections = r.installedSections(read[HookIngress])
	}
	prog := compilePort(b, dev, r.opts, sections)
	if prog == nil && !ok {
		return nil // nothing installed, nothing wanted
	}
	if prog != nil && !ok {
		if err := r.k.ensureClsact(dev); err != nil {
			return err
		}
		if p, pins := r.k.(pinner); pins {
			unpin, err := p.pin(dev)
			if err != nil {
				return err
			}
			defer unpin()
		}
	}
	before := r.stats
	if err := r.reconcile(dev, [2]*hookProgram{HookIngress: prog}, read, HookIngress); err != nil {
		return err
	}
	for _, pt := range b.Ports {
		if pt.Dev == dev {
			r.setApplied(dev, pt.RuleSet)
		}
	}
	r.setAlone(dev, false)
	if d := r.stats.sub(before); d.Adds+d.Replaces+d.Deletes+d.Flushes > 0 {
		r.reportOffload(dev)
	}
	return nil
}

// clearEgress removes what the representor placement put on dev's egress
// hook (nothing decides there in the bridge placement).
func (r *reconciler) clearEgress(dev string) error {
	ok, err := r.k.hasClsact(dev)
	if err != nil || !ok {
		return err
	}
	before := r.stats
	if err := r.reconcile(dev, [2]*hookProgram{}, [2]*hookState{}, HookEgress); err != nil {
		return err
	}
	if d := r.stats.sub(before); d.Adds+d.Replaces+d.Deletes+d.Flushes > 0 {
		r.reportOffload(dev)
	}
	return nil
}

// installedSections reads a port's section numbers in its active
// generation from its entries: the sender section from a representor's
// entry filter, the receivers from the dispatch entries (in chain 0 on the
// uplink).
func (r *reconciler) installedSections(st *hookState) map[MAC]int {
	base, active := r.activeBase(st)
	if !active {
		return nil
	}
	out := map[MAC]int{}
	for _, f := range append(append([]*Filter(nil), st.entries...), st.byChain[base+chainDispatch]...) {
		if len(f.Actions) != 1 || f.Actions[0].Kind != ActGoto || !r.opts.owns(f.Actions[0].Chain) {
			continue
		}
		rel := f.Actions[0].Chain - base
		switch {
		case f.Chain == 0 && f.Match.DstMACMask == (MAC{}) && rel < chainDispatch && rel%sectionSize == 0:
			out[selfSection] = int(rel / sectionSize)
		case f.Match.DstMACMask == exactMAC && rel >= chainReceivers && rel%sectionSize == 0:
			out[f.Match.DstMAC] = int((rel - chainReceivers) / sectionSize)
		}
	}
	return out
}
