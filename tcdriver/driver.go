package tcdriver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// Driver enforces rule sets on representors. The netlink driver (New) and
// the in-memory Fake (NewFake) implement it with the same reconciler, so
// they behave the same way.
type Driver interface {
	// Apply makes the representor enforce rs. It compiles rs, compares the
	// result with what is installed and changes only what differs, without
	// a moment where traffic is unenforced or wrongly dropped. When rs
	// cannot be expressed exactly, or the kernel refuses a change, it
	// returns an error and the representor keeps its previous rules.
	// With --tc-offload=required, a representor whose filters expected
	// in hardware are not all there after the change is closed (isolated
	// both ways) and the error is a *NotInHardwareError.
	Apply(ctx context.Context, dev string, rs *policy.RuleSet) error
	// ApplyBridge enforces the bridge placement on every port of b (see
	// Bridge): every verdict on the ingress hook of the port a frame
	// enters by.
	ApplyBridge(ctx context.Context, b *Bridge) error
	// RemoveBridge removes our filters from the ports of a bridge.
	RemoveBridge(ctx context.Context, name string) error
	// Remove deletes every filter the driver installed on the representor
	// and nothing else.
	Remove(ctx context.Context, dev string) error
	// Dump reads back what is installed on the representor (ours and
	// foreign filters), with the in_hw flag of each filter.
	Dump(ctx context.Context, dev string) (*State, error)
}

// kernel is the TC surface the reconciler needs: the netlink
// implementation talks to the kernel, fakeKernel keeps the same state in
// memory. Every error names the device and the operation.
type kernel interface {
	ensureClsact(dev string) error
	hasClsact(dev string) (bool, error)
	list(dev string, h Hook) ([]*Filter, error)
	add(dev string, f *Filter) error
	replace(dev string, f *Filter) error
	del(dev string, f *Filter) error
	flushChain(dev string, h Hook, chain uint32) error
}

// pinner is implemented by kernels that resolve the device once per Apply.
type pinner interface {
	pin(dev string) (unpin func(), err error)
}

// Stats counts the kernel operations a reconciler issued.
type Stats struct {
	Adds, Replaces, Deletes, Flushes, Dumps int
}

// Total is the number of netlink requests.
func (s Stats) Total() int { return s.Adds + s.Replaces + s.Deletes + s.Flushes + s.Dumps }

func (s Stats) sub(o Stats) Stats {
	return Stats{s.Adds - o.Adds, s.Replaces - o.Replaces, s.Deletes - o.Deletes, s.Flushes - o.Flushes, s.Dumps - o.Dumps}
}

// reconciler implements Driver over a kernel.
type reconciler struct {
	k       kernel
	opts    Options
	log     logrus.FieldLogger
	stats   Stats
	last    Stats
	metrics *Metrics

	// applied is the rule set each representor enforces since the last
	// successful Apply, for the counters collector (which scrapes from
	// another goroutine).
	appliedMu sync.Mutex
	applied   map[string]*policy.RuleSet

	// bridges are the bridges as of their last ApplyBridge.
	bridgesMu sync.Mutex
	bridges   map[string]*Bridge
	// alone are the devices last programmed alone (Apply).
	alone map[string]bool
	// hw is, per device, what the last read back of in_hw found
	// (reportOffload): --tc-offload=required judges a port by it, and a
	// warning is logged when its missing filters stop being none.
	hw map[string]*hwCheck
	// hwRefused are the ports --tc-offload=required closed at their last
	// apply (wasRefused).
	hwRefused map[string]bool
}

func newReconciler(k kernel, opts Options, log logrus.FieldLogger) *reconciler {
	if log == nil {
		l := logrus.New()
		l.SetLevel(logrus.WarnLevel)
		log = l
	}
	return &reconciler{k: k, opts: opts.withDefaults(), log: log, applied: map[string]*policy.RuleSet{}}
}

// Stats returns the cumulative kernel operations.
func (r *reconciler) Stats() Stats { return r.stats }

// LastApply returns the kernel operations of the last Apply or Remove.
func (r *reconciler) LastApply() Stats { return r.last }

func (r *reconciler) Apply(ctx context.Context, dev string, rs *policy.RuleSet) error {
	start := r.stats
	defer func() { r.last = r.stats.sub(start) }()
	prog, err := Compile(rs, r.opts)
	if err != nil {
		return fmt.Errorf("representor %s: refusing rule set, previous rules kept: %w", dev, err)
	}
	if other, clash := zoneConflict(r.opts.Zones, rs, r.Applied(), dev); clash {
		return fmt.Errorf("representor %s: refusing rule set, previous rules kept: networks %s and %s map to the same conntrack zone %d of --ct-zone-range %s and would share connection state; choose another range",
			dev, rs.Attachment.Network, other, r.opts.Zones.Of(rs.Attachment.Network), r.opts.Zones)
	}
	if prog.Hooks[HookIngress] != nil || prog.Hooks[HookEgress] != nil {
		if err := r.k.ensureClsact(dev); err != nil {
			return err
		}
	} else if ok, err := r.k.hasClsact(dev); err != nil {
		return err
	} else if !ok {
		return nil // nothing installed, nothing wanted
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if p, ok := r.k.(pinner); ok {
		unpin, err := p.pin(dev)
		if err != nil {
			return err
		}
		defer unpin()
	}
	if r.opts.Offload == OffloadRequired && r.wasRefused(dev) && !closedLike(rs) {
		// Refused last time: closed first, and its rules only if the
		// device holds the closed filters in hardware now.
		closed := closedRuleSet(rs.Attachment, true)
		if err := r.k.ensureClsact(dev); err != nil {
			return err
		}
		if err := r.apply(ctx, dev, closed); err != nil {
			return err
		}
		r.setAlone(dev, true)
		r.setApplied(dev, closed)
		if nih := r.notInHWOn(dev, rs.Attachment, nil); nih != nil {
			return nih
		}
	}
	before := r.stats
	if err := r.reconcile(dev, prog.Hooks, [2]*hookState{}); err != nil {
		return err
	}
	r.setAlone(dev, true)
	var chk *hwCheck
	if d := r.stats.sub(before); d.Adds+d.Replaces+d.Deletes+d.Flushes > 0 {
		chk = r.reportOffload(dev)
	}
	r.setApplied(dev, rs)
	if nih := r.requiredRefusal(dev, rs, chk); nih != nil {
		// --tc-offload=required: the pod's rules are not all in
		// hardware, so the representor is closed instead (in software:
		// the closed rules are not judged by where they run).
		closed := closedRuleSet(rs.Attachment, true)
		if err := r.apply(ctx, dev, closed); err != nil {
			// Not a NotInHardwareError: the port was not closed.
			return fmt.Errorf("%s; closing it failed, so it keeps these rules (enforced in software): %w", nih.Error(), err)
		}
		r.setApplied(dev, closed)
		r.setRefused(dev, true)
		return nih
	}
	r.setRefused(dev, false)
	return nil
}

// apply programs a representor alone without judging where its filters
// run (the closed rules of a refused port).
func (r *reconciler) apply(ctx context.Context, dev string, rs *policy.RuleSet) error {
	prog, err := Compile(rs, r.opts)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	before := r.stats
	if err := r.reconcile(dev, prog.Hooks, [2]*hookState{}); err != nil {
		return err
	}
	if d := r.stats.sub(before); d.Adds+d.Replaces+d.Deletes+d.Flushes > 0 {
		r.reportOffload(dev)
	}
	return nil
}

func (r *reconciler) setApplied(dev string, rs *policy.RuleSet) {
	r.appliedMu.Lock()
	defer r.appliedMu.Unlock()
	if rs == nil {
		delete(r.applied, dev)
	} else {
		r.applied[dev] = rs
	}
}

// Applied returns the rule set each representor enforces, as of the last
// successful Apply (Remove forgets it). Safe to call concurrently.
func (r *reconciler) Applied() map[string]*policy.RuleSet {
	r.appliedMu.Lock()
	defer r.appliedMu.Unlock()
	return maps.Clone(r.applied)
}

// hookState is what the kernel holds on one hook, split by ownership.
type hookState struct {
	hook    Hook
	entries []*Filter            // our filters in chain 0 at the entry priority
	byChain map[uint32][]*Filter // our filters by chain (owned range)
}

func (r *reconciler) readHook(dev string, h Hook) (*hookState, error) {
	r.stats.Dumps++
	fs, err := r.k.list(dev, h)
	if err != nil {
		return nil, err
	}
	st := &hookState{hook: h, byChain: map[uint32][]*Filter{}}
	for _, f := range fs {
		switch {
		case f.Chain == 0 && f.Prio == r.opts.EntryPrio && f.ours():
			st.entries = append(st.entries, f)
		case r.opts.owns(f.Chain):
			st.byChain[f.Chain] = append(st.byChain[f.Chain], f)
		}
	}
	return st, nil
}

// activeBase returns the generation base the entry filters point into.
func (r *reconciler) activeBase(st *hookState) (uint32, bool) {
	for _, e := range st.entries {
		if len(e.Actions) == 1 && e.Actions[0].Kind == ActGoto && r.opts.owns(e.Actions[0].Chain) {
			return r.opts.slotBase(r.opts.slotOf(e.Actions[0].Chain)), true
		}
	}
	return 0, false
}

type planKind uint8

const (
	planNoop planKind = iota
	planRemove
	planInPlace
	planSwitch
)

// hookPlan is what Apply does on one hook, in three phases: prepare (no
// effect on traffic), commit (the change becomes visible), cleanup (remove
// what became unreachable).
type hookPlan struct {
	h    Hook
	st   *hookState
	kind planKind
	// planSwitch
	newBase    uint32
	newFilters []*Filter
	newEntries []*Filter
	// what committing the entries did, for rollback
	entryReplaced, entryAdded, entryDeleted []*Filter
	// planInPlace
	diffs    []chainDiff
	added    []*Filter
	deleted  []*Filter
	replaced []*Filter
	keepSlot int // cleanup flushes every owned chain outside this slot (-1: all)
}

type chainDiff struct {
	chain      uint32
	adds, dels []*Filter
	created    bool
	// emptied: nothing is wanted in the chain any more; it is flushed in
	// one request instead of deleting its filters one by one.
	emptied bool
	// replaces are dispatch entries moved to a rebuilt section (same
	// match, same handle, new target), replaced after every add and
	// before every delete; replaced are what they replace.
	replaces, replaced []*Filter
}

// plan decides what to do on one hook; st is what the hook holds when the
// caller has read it already (nil: read it).
func (r *reconciler) plan(dev string, h Hook, hp *hookProgram, st *hookState) (*hookPlan, error) {
	if st == nil {
		var err error
		if st, err = r.readHook(dev, h); err != nil {
			return nil, err
		}
	}
	p := &hookPlan{h: h, st: st, keepSlot: -1}
	if hp == nil {
		if len(st.entries) > 0 || len(st.byChain) > 0 {
			p.kind = planRemove
		}
		return p, nil
	}
	base, active := r.activeBase(st)
	if active {
		diffs, ok, fresh := r.planInPlace(hp, st, base)
		if !ok && len(fresh) > 0 && hp.recompile != nil {
			// Only bridge sections stand in the way: build those afresh
			// under new numbers and move their entries to them.
			diffs, ok, _ = r.planInPlace(hp.recompile(fresh), st, base)
		}
		if ok {
			p.kind, p.diffs, p.keepSlot = planInPlace, diffs, r.opts.slotOf(base)
			if len(diffs) == 0 && !r.hasOtherSlot(st, p.keepSlot) {
				p.kind = planNoop
			}
			return p, nil
		}
	}
	slot := 0
	if active && base == r.opts.slotBase(0) {
		slot = 1
	}
	p.kind, p.keepSlot = planSwitch, slot
	p.newBase = r.opts.slotBase(slot)
	p.newFilters = hp.materialize(p.newBase)
	p.newEntries = hp.entryFilters(h, p.newBase, r.opts)
	return p, nil
}

func (r *reconciler) hasOtherSlot(st *hookState, keep int) bool {
	for c := range st.byChain {
		if r.opts.slotOf(c) != keep {
			return true
		}
	}
	return false
}

// reconcile applies the programs of both hooks so that the attachment
// either moves to the new rules or keeps the old ones: new generations are
// built first on both hooks (invisible), then committed hook by hook; a
// failed commit rolls the hooks already committed back.
func (r *reconciler) reconcile(dev string, progs [2]*hookProgram, read [2]*hookState, only ...Hook) error {
	var plans []*hookPlan
	hooks := Hooks
	if len(only) > 0 {
		hooks = only
	}
	for _, h := range hooks {
		p, err := r.plan(dev, h, progs[h], read[h])
		if err != nil {
			return err
		}
		plans = append(plans, p)
	}
	// Prepare.
	for i, p := range plans {
		if p.kind != planSwitch {
			continue
		}
		if err := r.prepareSwitch(dev, p); err != nil {
			for _, q := range plans[:i+1] {
				if q.kind == planSwitch {
					r.flushFilters(dev, q.h, q.newFilters)
				}
			}
			return err
		}
	}
	// Commit.
	for i, p := range plans {
		if err := r.commit(dev, p); err != nil {
			for j := i - 1; j >= 0; j-- {
				r.rollback(dev, plans[j])
			}
			for _, q := range plans {
				if q.kind == planSwitch {
					r.flushFilters(dev, q.h, q.newFilters)
				}
			}
			return err
		}
	}
	// Cleanup: the old generations are unreachable now.
	for _, p := range plans {
		if p.kind == planNoop {
			continue
		}
		keep := p.keepSlot
		if err := r.flushChains(dev, p.h, p.st, func(c uint32) bool { return keep < 0 || r.opts.slotOf(c) != keep }); err != nil {
			return err
		}
	}
	return nil
}

// prepareSwitch builds the new generation in the inactive slot.
func (r *reconciler) prepareSwitch(dev string, p *hookPlan) error {
	// Leftovers of an interrupted apply in the target slot are unreachable.
	slot := p.keepSlot
	if err := r.flushChains(dev, p.h, p.st, func(c uint32) bool { return r.opts.slotOf(c) == slot }); err != nil {
		return err
	}
	for c := range p.st.byChain {
		if r.opts.slotOf(c) == slot {
			delete(p.st.byChain, c)
		}
	}
	// Leaf chains first (not that it matters before the switch).
	for i := len(p.newFilters) - 1; i >= 0; i-- {
		if err := r.add(dev, p.newFilters[i]); err != nil {
			return err
		}
	}
	return nil
}

func (r *reconciler) commit(dev string, p *hookPlan) error {
	switch p.kind {
	case planRemove:
		// Stop enforcing first (the new state allows everything).
		for _, e := range p.st.entries {
			if err := r.del(dev, e); err != nil {
				r.rollback(dev, p)
				return err
			}
			p.entryDeleted = append(p.entryDeleted, e)
		}
	case planSwitch:
		// Each entry is replaced in one request (same match: the new
		// generation; flower replaces atomically), then the entries that
		// appear are added and the ones that go deleted.
		installed := map[string]*Filter{}
		for _, e := range p.st.entries {
			installed[e.matchString()] = e
		}
		handles := nextHandles(p.st.entries)
		for _, e := range p.newEntries {
			old := installed[e.matchString()]
			var err error
			if old != nil {
				e.Handle = old.Handle
				delete(installed, e.matchString())
				r.stats.Replaces++
				if err = r.k.replace(dev, e); err == nil {
					p.entryReplaced = append(p.entryReplaced, old)
				}
			} else {
				e.Handle = handles(e.tp())
				if err = r.add(dev, e); err == nil {
					p.entryAdded = append(p.entryAdded, e)
				}
			}
			if err != nil {
				r.rollback(dev, p)
				return err
			}
		}
		for _, e := range p.st.entries {
			if installed[e.matchString()] != e {
				continue
			}
			if err := r.del(dev, e); err != nil {
				r.rollback(dev, p)
				return err
			}
			p.entryDeleted = append(p.entryDeleted, e)
		}
	case planInPlace:
		for _, d := range p.diffs {
			have := p.st.byChain[d.chain]
			if d.chain == 0 {
				have = p.st.entries
			}
			handles := nextHandles(have)
			for _, f := range d.adds {
				f.Handle = handles(f.tp())
				if err := r.add(dev, f); err != nil {
					r.rollback(dev, p)
					return err
				}
				p.added = append(p.added, f)
			}
		}
		for _, d := range p.diffs {
			for i, f := range d.replaces {
				r.stats.Replaces++
				if err := r.k.replace(dev, f); err != nil {
					r.rollback(dev, p)
					return err
				}
				p.replaced = append(p.replaced, d.replaced[i])
			}
		}
		for _, d := range p.diffs {
			if d.emptied {
				r.stats.Flushes++
				if err := r.k.flushChain(dev, p.h, d.chain); err != nil {
					r.rollback(dev, p)
					return err
				}
				p.deleted = append(p.deleted, d.dels...)
				continue
			}
			for _, f := range d.dels {
				if err := r.del(dev, f); err != nil {
					r.rollback(dev, p)
					return err
				}
				p.deleted = append(p.deleted, f)
			}
		}
	}
	return nil
}

// rollback undoes a committed plan (best effort: a kernel that refuses the
// undo is reported, and the next Apply repairs the hook from what it reads).
func (r *reconciler) rollback(dev string, p *hookPlan) {
	var errs []error
	switch p.kind {
	case planRemove, planSwitch:
		for _, e := range p.entryDeleted {
			errs = append(errs, r.add(dev, e))
		}
		for _, e := range p.entryReplaced {
			r.stats.Replaces++
			errs = append(errs, r.k.replace(dev, e))
		}
		for _, e := range p.entryAdded {
			errs = append(errs, r.del(dev, e))
		}
		p.entryDeleted, p.entryReplaced, p.entryAdded = nil, nil, nil
	case planInPlace:
		for _, f := range p.deleted {
			errs = append(errs, r.add(dev, f))
		}
		for _, f := range p.replaced {
			r.stats.Replaces++
			errs = append(errs, r.k.replace(dev, f))
		}
		for _, f := range p.added {
			errs = append(errs, r.del(dev, f))
		}
		p.added, p.deleted, p.replaced = nil, nil, nil
	}
	if err := errors.Join(errs...); err != nil {
		r.log.WithError(err).WithFields(logrus.Fields{"representor": dev, "hook": p.h.String()}).Error("rolling back a failed apply")
	}
}

func (r *reconciler) flushFilters(dev string, h Hook, fs []*Filter) {
	chains := map[uint32]bool{}
	for _, f := range fs {
		chains[f.Chain] = true
	}
	for c := range chains {
		r.stats.Flushes++
		if err := r.k.flushChain(dev, h, c); err != nil {
			r.log.WithError(err).WithField("representor", dev).Warn("cleaning up an unreachable partial generation")
		}
	}
}

func (r *reconciler) flushChains(dev string, h Hook, st *hookState, sel func(uint32) bool) error {
	chains := make([]uint32, 0, len(st.byChain))
	for c := range st.byChain {
		if sel(c) {
			chains = append(chains, c)
		}
	}
	sort.Slice(chains, func(i, j int) bool { return chains[i] < chains[j] })
	for _, c := range chains {
		r.stats.Flushes++
		if err := r.k.flushChain(dev, h, c); err != nil {
			return err
		}
	}
	return nil
}

// planInPlace computes the difference inside the active generation and
// says whether applying it in place is safe: only peer filters or only port
// filters of any rule change, so that every intermediate state allows a
// subset of (old ∪ new) and never a (peer, port) pair that neither allows.
//
// On a bridge port, a receiver section that cannot change in place does not
// force a generation switch: planInPlace returns the MACs of such
// receivers (fresh), and a program that rebuilds them under new section
// numbers (hookProgram.recompile) changes in place: the new sections are
// built, their dispatch entries replaced, the old sections flushed.
func (r *reconciler) planInPlace(hp *hookProgram, st *hookState, base uint32) (diffs []chainDiff, ok bool, fresh map[MAC]bool) {
	want := hp.materialize(base)
	wantBy := map[uint32][]*Filter{}
	for _, f := range want {
		wantBy[f.Chain] = append(wantBy[f.Chain], f)
	}
	type ruleKey struct {
		section uint32
		rule    int
	}
	peersChanged := map[ruleKey]bool{}
	portsChanged := map[ruleKey]bool{}
	chains := map[uint32]bool{}
	for c := range wantBy {
		chains[c] = true
	}
	for c := range st.byChain {
		chains[c] = true
	}
	slot := r.opts.slotOf(base)
	// Bridge receiver sections that appear or go as a whole change in
	// place: built before their dispatch entry is added, flushed after it
	// is deleted.
	had, wants := map[uint32]bool{}, map[uint32]bool{}
	for c := range chains {
		if hp.bridge && r.opts.slotOf(c) == slot && isSection(c-base) {
			sec := sectionOf(c - base)
			had[sec] = had[sec] || len(st.byChain[c]) > 0
			wants[sec] = wants[sec] || len(wantBy[c]) > 0
		}
	}
	wholeSection := func(target uint32, appear bool) bool {
		if !hp.bridge || !isSection(target) {
			return false
		}
		sec := sectionOf(target)
		if appear {
			return !had[sec] && wants[sec]
		}
		return had[sec] && !wants[sec]
	}
	blocked := map[uint32]bool{} // bridge sections that cannot change in place
	hard := false
	// The entry filters: unchanged; or, on a bridge port, moved from a
	// section that goes to one that appears (one replace), added with a
	// section that appears, deleted with one that goes.
	entryDiff := chainDiff{chain: 0}
	{
		adds, dels := diffFilters(st.entries, hp.entryFilters(st.hook, base, r.opts))
		entryDiff.adds, entryDiff.dels = adds, dels
		if len(adds)+len(dels) > 0 {
			var ok bool
			if entryDiff, ok = movedEntries(entryDiff, r.opts.EntryPrio, base, wholeSection); !ok {
				return nil, false, nil
			}
		}
	}
	for c := range chains {
		if r.opts.slotOf(c) != slot {
			continue // the other slot is flushed in cleanup
		}
		adds, dels := diffFilters(st.byChain[c], wantBy[c])
		if len(adds) == 0 && len(dels) == 0 {
			continue
		}
		rel := c - base
		role, known := hp.roles[rel]
		d := chainDiff{chain: c, adds: adds, dels: dels, created: len(st.byChain[c]) == 0, emptied: len(wantBy[c]) == 0}
		switch {
		case wholeSection(rel, true) || wholeSection(rel, false):
		case hp.bridge && isSection(rel) && (!known || role.kind == roleFixed):
			blocked[sectionOf(rel)] = true
		case !known || role.kind == roleFixed:
			hard = true
		case role.kind == roleDispatch:
			var good bool
			if d, good = dispatchEntriesOnly(d, base, wholeSection); !good {
				hard = true
			}
		case role.kind == rolePeers:
			peersChanged[ruleKey{role.section, role.rule}] = true
		case len(st.byChain[c]) > 0 && len(wantBy[c]) > 0:
			portsChanged[ruleKey{role.section, role.rule}] = true
		}
		diffs = append(diffs, d)
	}
	for rk := range peersChanged {
		// Both peers and ports of one rule changed, or a rule whose port
		// chains appear or disappear together with a peer change: an
		// intermediate state could allow a pair neither allows.
		if portsChanged[rk] || !r.portSignatureStable(st, wantBy, base+rk.section, rk.rule) {
			if hp.bridge {
				blocked[rk.section] = true
			} else {
				hard = true
			}
		}
	}
	if hard {
		return nil, false, nil
	}
	if len(blocked) > 0 {
		// The blocked sections' keys, from the entries that lead to them
		// (a representor's entry filter has no MAC: its sender section).
		fresh = map[MAC]bool{}
		for _, f := range append(append([]*Filter(nil), st.entries...), st.byChain[base+chainDispatch]...) {
			if len(f.Actions) == 1 && f.Actions[0].Kind == ActGoto && r.opts.owns(f.Actions[0].Chain) && blocked[sectionOf(f.Actions[0].Chain-base)] {
				fresh[f.Match.DstMAC] = true
			}
		}
		return nil, false, fresh
	}
	if len(entryDiff.adds)+len(entryDiff.dels)+len(entryDiff.replaces) > 0 {
		diffs = append(diffs, entryDiff)
	}
	// Order: chains that are created (not yet reachable) first, then a
	// bridge port's dispatch chain (its entries are added after their
	// sections exist and deleted before they go), then the others; within
	// the commit, all adds come before all replaces, and those before all
	// deletes.
	sort.Slice(diffs, func(i, j int) bool {
		if diffs[i].created != diffs[j].created {
			return diffs[i].created
		}
		entryish := func(c uint32) bool { return c == 0 || c-base == chainDispatch }
		if di, dj := entryish(diffs[i].chain), entryish(diffs[j].chain); di != dj {
			return di
		}
		return diffs[i].chain > diffs[j].chain
	})
	return diffs, true, nil
}

// dispatchEntriesOnly checks that a dispatch chain's change is only
// receiver entries that come or go with their whole section (or drop), and
// turns an entry deleted and added again with the same match (its section
// rebuilt under a new number) into a replace of the installed entry.
func dispatchEntriesOnly(d chainDiff, base uint32, wholeSection func(uint32, bool) bool) (chainDiff, bool) {
	return movedEntries(d, prioDispatchEntry, base, wholeSection)
}

// movedEntries is dispatchEntriesOnly for entries at prio (the dispatch
// chain's, or chain 0's entry filters).
func movedEntries(d chainDiff, prio uint16, base uint32, wholeSection func(uint32, bool) bool) (chainDiff, bool) {
	entry := func(f *Filter, appear bool) bool {
		if f.Prio != prio || len(f.Actions) != 1 {
			return false
		}
		a := f.Actions[0]
		return a.Kind != ActGoto || wholeSection(a.Chain-base, appear)
	}
	dels := map[string]*Filter{}
	for _, f := range d.dels {
		if !entry(f, false) {
			return d, false
		}
		dels[f.matchString()] = f
	}
	var adds []*Filter
	for _, f := range d.adds {
		if !entry(f, true) {
			return d, false
		}
		if old := dels[f.matchString()]; old != nil {
			f.Handle = old.Handle
			d.replaces, d.replaced = append(d.replaces, f), append(d.replaced, old)
			delete(dels, f.matchString())
			continue
		}
		adds = append(adds, f)
	}
	d.adds, d.dels = adds, nil
	for _, f := range dels {
		d.dels = append(d.dels, f)
	}
	sortFilters(d.dels)
	return d, true
}

// portSignatureStable reports whether a rule's port set is the same before
// and after, judged on its port chains (IPv4 and IPv6 chains hold the same
// ports, so one surviving chain is enough).
func (r *reconciler) portSignatureStable(st *hookState, wantBy map[uint32][]*Filter, base uint32, rule int) bool {
	sig := func(fs []*Filter) string {
		var keys []string
		for _, f := range fs {
			if f.Prio == prioCatchAll {
				continue
			}
			m := f.Match
			keys = append(keys, fmt.Sprintf("%d/%d-%d/%v", m.IPProto, m.DstPortMin, m.DstPortMax, f.Protocol == Eth8021Q))
		}
		sort.Strings(keys)
		return fmt.Sprint(keys)
	}
	var before, after []string
	for _, v6 := range []bool{false, true} {
		c := base + rulePortChain(rule, v6)
		if fs := st.byChain[c]; len(fs) > 0 {
			before = append(before, sig(fs))
		}
		if fs := wantBy[c]; len(fs) > 0 {
			after = append(after, sig(fs))
		}
	}
	if len(before) == 0 || len(after) == 0 {
		return len(before) == 0 && len(after) == 0 // no ports before and after
	}
	for _, s := range append(before[1:], after...) {
		if s != before[0] {
			return false
		}
	}
	return true
}

// diffFilters returns the filters of want missing from have and the
// filters of have not wanted, comparing by key (not handle).
func diffFilters(have, want []*Filter) (adds, dels []*Filter) {
	count := map[string][]*Filter{}
	for _, f := range have {
		k := f.key()
		if f.Foreign {
			k = "foreign:" + f.String()
		}
		count[k] = append(count[k], f)
	}
	for _, f := range want {
		k := f.key()
		if l := count[k]; len(l) > 0 {
			count[k] = l[1:]
			continue
		}
		adds = append(adds, cloneFilter(f))
	}
	for _, l := range count {
		dels = append(dels, l...)
	}
	sortFilters(dels)
	return adds, dels
}

// nextHandles allocates handles above those in use, per (chain, prio).
func nextHandles(have []*Filter) func(tpKey) uint32 {
	max := map[tpKey]uint32{}
	for _, f := range have {
		if f.Handle > max[f.tp()] {
			max[f.tp()] = f.Handle
		}
	}
	return func(k tpKey) uint32 {
		max[k]++
		return max[k]
	}
}

func (r *reconciler) add(dev string, f *Filter) error {
	r.stats.Adds++
	return r.k.add(dev, f)
}

func (r *reconciler) del(dev string, f *Filter) error {
	r.stats.Deletes++
	return r.k.del(dev, f)
}

func (r *reconciler) Remove(ctx context.Context, dev string) error {
	r.setApplied(dev, nil) // its counters stop being reported now
	r.setAlone(dev, false)
	start := r.stats
	defer func() { r.last = r.stats.sub(start) }()
	ok, err := r.k.hasClsact(dev)
	if err != nil || !ok {
		return err
	}
	if err := r.reconcile(dev, [2]*hookProgram{}, [2]*hookState{}); err != nil {
		return err
	}
	if r.metrics != nil {
		r.metrics.forget(dev)
	}
	r.forgetCheck(dev)
	return nil
}

func (r *reconciler) Dump(ctx context.Context, dev string) (*State, error) {
	st := &State{Dev: dev}
	ok, err := r.k.hasClsact(dev)
	if err != nil {
		return nil, err
	}
	st.Clsact = ok
	if !ok {
		return st, nil
	}
	for _, h := range Hooks {
		fs, err := r.k.list(dev, h)
		if err != nil {
			return nil, err
		}
		st.Filters = append(st.Filters, fs...)
	}
	sortFilters(st.Filters)
	return st, nil
}

// ErrNoDevice is returned (wrapped) when the representor does not exist.
var ErrNoDevice = errors.New("no such representor")
