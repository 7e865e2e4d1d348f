package tcdriver

import (
	"context"
	"errors"
	"fmt"
	"sort"

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
	Apply(ctx context.Context, dev string, rs *policy.RuleSet) error
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
}

func newReconciler(k kernel, opts Options, log logrus.FieldLogger) *reconciler {
	if log == nil {
		l := logrus.New()
		l.SetLevel(logrus.WarnLevel)
		log = l
	}
	return &reconciler{k: k, opts: opts.withDefaults(), log: log}
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
	if prog.Hooks[HookIngress] != nil || prog.Hooks[HookEgress] != nil {
		if err := r.k.ensureClsact(dev); err != nil {
			return err
		}
	} else if ok, err := r.k.hasClsact(dev); err != nil {
		return err
	} else if !ok {
		return nil // nothing installed, nothing wanted
	}
	for _, h := range Hooks {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := r.applyHook(dev, h, prog.Hooks[h]); err != nil {
			return err
		}
	}
	if d := r.stats.sub(start); d.Adds+d.Replaces+d.Deletes+d.Flushes > 0 {
		r.reportOffload(dev)
	}
	return nil
}

// hookState is what the kernel holds on one hook, split by ownership.
type hookState struct {
	entry   *Filter              // our entry filter in chain 0, if any
	byChain map[uint32][]*Filter // our filters by chain (owned range)
}

func (r *reconciler) readHook(dev string, h Hook) (*hookState, error) {
	r.stats.Dumps++
	fs, err := r.k.list(dev, h)
	if err != nil {
		return nil, err
	}
	st := &hookState{byChain: map[uint32][]*Filter{}}
	for _, f := range fs {
		switch {
		case f.Chain == 0 && f.Prio == r.opts.EntryPrio && f.Handle == entryHandle && f.ours():
			st.entry = f
		case r.opts.owns(f.Chain):
			st.byChain[f.Chain] = append(st.byChain[f.Chain], f)
		}
	}
	return st, nil
}

// activeBase returns the generation base the entry filter points at.
func (r *reconciler) activeBase(st *hookState) (uint32, bool) {
	if st.entry == nil || len(st.entry.Actions) != 1 || st.entry.Actions[0].Kind != ActGoto {
		return 0, false
	}
	base := st.entry.Actions[0].Chain
	for slot := 0; slot < 2; slot++ {
		if base == r.opts.slotBase(slot) {
			return base, true
		}
	}
	return 0, false
}

func (r *reconciler) applyHook(dev string, h Hook, hp *hookProgram) error {
	st, err := r.readHook(dev, h)
	if err != nil {
		return err
	}
	if hp == nil {
		// Stop enforcing first (the new state allows everything), then
		// clean up the unreachable chains.
		if st.entry != nil {
			if err := r.del(dev, st.entry); err != nil {
				return err
			}
		}
		return r.flushChains(dev, h, st, func(uint32) bool { return true })
	}
	base, active := r.activeBase(st)
	if active {
		want := hp.materialize(base)
		if r.entryNeedsUpdate(st.entry, h, base) {
			// Only the flags differ (offload mode changed): rebuild.
			return r.switchGeneration(dev, h, hp, st, base)
		}
		ok, err := r.tryInPlace(dev, h, hp, st, want, base)
		if err != nil || ok {
			return err
		}
	}
	return r.switchGeneration(dev, h, hp, st, base)
}

func (r *reconciler) entryNeedsUpdate(entry *Filter, h Hook, base uint32) bool {
	return entry.key() != r.opts.entryFilter(h, base).key()
}

// switchGeneration builds the program in the inactive slot, repoints the
// entry filter at it (one atomic replace), then deletes the old slot.
func (r *reconciler) switchGeneration(dev string, h Hook, hp *hookProgram, st *hookState, oldBase uint32) error {
	slot := 0
	if st.entry != nil && oldBase == r.opts.slotBase(0) {
		slot = 1
	}
	newBase := r.opts.slotBase(slot)
	inSlot := func(s int) func(uint32) bool {
		return func(c uint32) bool { return r.opts.slotOf(c) == s }
	}
	// Leftovers of an interrupted apply in the target slot are unreachable.
	if err := r.flushChains(dev, h, st, inSlot(slot)); err != nil {
		return err
	}
	want := hp.materialize(newBase)
	// Leaf chains first, so that no reachable goto ever points at a chain
	// that is still empty (not that it matters before the switch).
	for i := len(want) - 1; i >= 0; i-- {
		if err := r.add(dev, want[i]); err != nil {
			r.flushAfterFailure(dev, h, want)
			return err
		}
	}
	entry := r.opts.entryFilter(h, newBase)
	if st.entry != nil {
		r.stats.Replaces++
		if err := r.k.replace(dev, entry); err != nil {
			r.flushAfterFailure(dev, h, want)
			return err
		}
	} else if err := r.add(dev, entry); err != nil {
		r.flushAfterFailure(dev, h, want)
		return err
	}
	// The old generation is unreachable now.
	return r.flushChains(dev, h, st, inSlot(1-slot))
}

func (r *reconciler) flushAfterFailure(dev string, h Hook, want []*Filter) {
	chains := map[uint32]bool{}
	for _, f := range want {
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

// tryInPlace applies the difference inside the active generation when that
// is safe: only peer filters or only port filters of any rule change, so
// that every intermediate state allows a subset of (old ∪ new) and never a
// (peer, port) pair that neither allows. It returns false, having changed
// nothing, when a generation switch is needed.
func (r *reconciler) tryInPlace(dev string, h Hook, hp *hookProgram, st *hookState, want []*Filter, base uint32) (bool, error) {
	wantBy := map[uint32][]*Filter{}
	for _, f := range want {
		wantBy[f.Chain] = append(wantBy[f.Chain], f)
	}
	type chainDiff struct {
		chain      uint32
		adds, dels []*Filter
		created    bool
	}
	var diffs []chainDiff
	peersChanged := map[int]bool{}
	portsChanged := map[int]bool{}
	chains := map[uint32]bool{}
	for c := range wantBy {
		chains[c] = true
	}
	for c := range st.byChain {
		chains[c] = true
	}
	for c := range chains {
		if r.opts.slotOf(c) != r.opts.slotOf(base) {
			continue // the other slot is flushed below
		}
		adds, dels := diffFilters(st.byChain[c], wantBy[c])
		if len(adds) == 0 && len(dels) == 0 {
			continue
		}
		role, known := hp.roles[c-base]
		if !known || role.kind == roleFixed {
			return false, nil
		}
		if role.kind == rolePeers {
			peersChanged[role.rule] = true
		} else if len(st.byChain[c]) > 0 && len(wantBy[c]) > 0 {
			portsChanged[role.rule] = true
		}
		diffs = append(diffs, chainDiff{chain: c, adds: adds, dels: dels, created: len(st.byChain[c]) == 0})
	}
	for rule := range peersChanged {
		if portsChanged[rule] {
			return false, nil
		}
		// A rule whose port chains appear or disappear together with a
		// peer change has a port set we cannot compare: rebuild.
		if !r.portSignatureStable(st, wantBy, base, rule) {
			return false, nil
		}
	}
	// Order: chains that are created (not yet reachable) first, then adds,
	// then deletes; chains that become empty last.
	sort.Slice(diffs, func(i, j int) bool {
		if diffs[i].created != diffs[j].created {
			return diffs[i].created
		}
		return diffs[i].chain > diffs[j].chain
	})
	var added []*Filter
	undo := func() {
		for _, f := range added {
			r.stats.Deletes++
			_ = r.k.del(dev, f)
		}
	}
	for _, d := range diffs {
		handles := nextHandles(st.byChain[d.chain])
		for _, f := range d.adds {
			f.Handle = handles(f.tp())
			if err := r.add(dev, f); err != nil {
				undo()
				return true, err
			}
			added = append(added, f)
		}
	}
	for _, d := range diffs {
		for _, f := range d.dels {
			if err := r.del(dev, f); err != nil {
				return true, err
			}
		}
	}
	// Residue of an interrupted switch in the inactive slot.
	other := 1 - r.opts.slotOf(base)
	return true, r.flushChains(dev, h, st, func(c uint32) bool { return r.opts.slotOf(c) == other })
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
	start := r.stats
	defer func() { r.last = r.stats.sub(start) }()
	ok, err := r.k.hasClsact(dev)
	if err != nil || !ok {
		return err
	}
	for _, h := range Hooks {
		if err := r.applyHook(dev, h, nil); err != nil {
			return err
		}
	}
	if r.metrics != nil {
		r.metrics.forget(dev)
	}
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
		for _, f := range fs {
			if r.opts.owns(f.Chain) && !f.Foreign {
				f.Cookie = append([]byte(nil), f.Cookie...)
			}
		}
		st.Filters = append(st.Filters, fs...)
	}
	sortFilters(st.Filters)
	return st, nil
}

// reportOffload reads back in_hw of our filters and reports it in the debug
// log and the metric.
func (r *reconciler) reportOffload(dev string) {
	st, err := r.Dump(context.Background(), dev)
	if err != nil {
		r.log.WithError(err).WithField("representor", dev).Warn("reading back in_hw")
		return
	}
	perHook := map[Hook][2]int{}
	for _, f := range st.Ours() {
		c := perHook[f.Hook]
		c[1]++
		if f.InHW {
			c[0]++
		}
		perHook[f.Hook] = c
	}
	for _, h := range Hooks {
		c := perHook[h]
		r.log.WithFields(logrus.Fields{"representor": dev, "hook": h.String(), "filters": c[1], "in_hw": c[0], "offload": r.opts.Offload}).Debug("tc filters programmed")
		if r.metrics != nil {
			r.metrics.set(dev, h, c[0], c[1])
		}
	}
}

// ErrNoDevice is returned (wrapped) when the representor does not exist.
var ErrNoDevice = errors.New("no such representor")
