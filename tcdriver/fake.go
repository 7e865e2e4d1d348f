package tcdriver

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// Fake is a Driver over an in-memory kernel. It runs the same reconciler as
// the netlink driver, and its kernel enforces what the real one does
// (devices must exist, clsact must be present, handles and keys are unique
// in a (chain, prio), a prio has one protocol, deleting what is not there
// fails), so tests of callers see real behaviour, not recorded calls.
type Fake struct {
	*reconciler
	k *fakeKernel
}

var _ Driver = (*Fake)(nil)

// NewFake returns a Fake that knows the representors devs.
func NewFake(opts Options, devs ...string) *Fake {
	k := &fakeKernel{devs: map[string]*fakeDev{}, failAfter: -1}
	for _, d := range devs {
		k.devs[d] = &fakeDev{}
	}
	return &Fake{reconciler: newReconciler(k, opts, nil), k: k}
}

// NewFakeWithLogger is NewFake with a logger for the debug output.
func NewFakeWithLogger(opts Options, log logrus.FieldLogger, devs ...string) *Fake {
	f := NewFake(opts, devs...)
	f.log = log
	return f
}

// AddDevice makes a representor appear.
func (f *Fake) AddDevice(dev string) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	if f.k.devs[dev] == nil {
		f.k.devs[dev] = &fakeDev{}
	}
}

// SetOffload makes dev a switchdev port whose hardware matches what prof
// matches, on its ingress hook only (as mlx5): filters added from now on
// are held in hardware (in_hw, in_hw_count 1) unless skip_hw. A device
// without it offloads nothing (veth, netdevsim, hw-tc-offload off); one set
// to a stricter profile than the driver's refuses what that profile cannot
// match (a NIC that matches less than --offload-profile says), so tests of
// --tc-offload=required can miss one filter as well as all of them.
func (f *Fake) SetOffload(dev string, prof Profile) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	if d := f.k.devs[dev]; d != nil {
		d.offloads = &prof
	}
}

// Devices lists the fake kernel's network devices, sorted.
func (f *Fake) Devices() []string {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	devs := make([]string, 0, len(f.k.devs))
	for d := range f.k.devs {
		devs = append(devs, d)
	}
	sort.Strings(devs)
	return devs
}

// RenameDevice renames a representor netdev. Its qdisc and filters go with
// it, as they do in the kernel, where they belong to the ifindex.
func (f *Fake) RenameDevice(old, name string) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	if d := f.k.devs[old]; d != nil {
		delete(f.k.devs, old)
		f.k.devs[name] = d
	}
}

// AddForeign installs a filter the driver did not create (another tool's),
// creating the clsact qdisc if needed.
func (f *Fake) AddForeign(dev string, flt *Filter) error {
	if err := f.k.ensureClsact(dev); err != nil {
		return err
	}
	c := cloneFilter(flt)
	c.Foreign = true
	if c.Kind == "" {
		c.Kind = "flower"
	}
	return f.k.add(dev, c)
}

// Watch calls fn after every change of a device's filters with the
// filters of its ingress hook then, as the kernel's packet path sees each
// state between two writes: a test asserts what must hold at every moment
// (a port never without a verdict). fn runs under the fake's lock and must
// not call it.
func (f *Fake) Watch(fn func(dev string, ingress []*Filter)) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	f.k.watch = fn
}

// FailAfter makes the n-th next kernel write fail (n=0: the next one) with
// EBUSY, to test that failed applies keep the previous rules. n<0 disables.
func (f *Fake) FailAfter(n int) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	f.k.failAfter = n
}

// Admits reports whether the filters installed on the representor dev let
// the first frame of the connection pp of its pod (address pod) through,
// traced on the hook that enforces pp's direction with empty conntrack.
func (f *Fake) Admits(dev string, pp policy.Packet, pod netip.Addr) bool {
	h := HookFor(pp.Direction)
	return Trace(f.Filters(dev, h), h, FrameFor(pp, pod, 40000), NewConntrack()).Verdict == Pass
}

// Filters returns a copy of everything installed on hook h of dev, for the
// tracer.
func (f *Fake) Filters(dev string, h Hook) []*Filter {
	fs, _ := f.k.list(dev, h)
	return fs
}

type fakeDev struct {
	clsact  bool
	filters []*Filter
	// offloads, when set, makes the device a switchdev port that holds in
	// hardware every filter its target matches (SetOffload).
	offloads *Profile
}

type fakeKernel struct {
	mu        sync.Mutex
	devs      map[string]*fakeDev
	failAfter int
	// watch sees every device after each change (Watch).
	watch func(dev string, ingress []*Filter)
}

// changed calls watch, under k.mu, with dev's ingress hook.
func (k *fakeKernel) changed(dev string, d *fakeDev) {
	if k.watch == nil {
		return
	}
	var in []*Filter
	for _, f := range d.filters {
		if f.Hook == HookIngress {
			in = append(in, cloneFilter(f))
		}
	}
	sortFilters(in)
	k.watch(dev, in)
}

func (k *fakeKernel) dev(name string) (*fakeDev, error) {
	d := k.devs[name]
	if d == nil {
		return nil, fmt.Errorf("representor %s: %w: %w", name, ErrNoDevice, syscall.ENODEV)
	}
	return d, nil
}

// write checks the injected failure.
func (k *fakeKernel) write(op, dev string) error {
	if k.failAfter == 0 {
		k.failAfter = -1
		return opError(op, dev, nil, syscall.EBUSY)
	}
	if k.failAfter > 0 {
		k.failAfter--
	}
	return nil
}

func (k *fakeKernel) ensureClsact(dev string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	d, err := k.dev(dev)
	if err != nil {
		return err
	}
	d.clsact = true
	return nil
}

func (k *fakeKernel) hasClsact(dev string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	d, err := k.dev(dev)
	if err != nil {
		return false, err
	}
	return d.clsact, nil
}

func (k *fakeKernel) list(dev string, h Hook) ([]*Filter, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	d, err := k.dev(dev)
	if err != nil {
		return nil, err
	}
	var out []*Filter
	for _, f := range d.filters {
		if f.Hook == h {
			out = append(out, cloneFilter(f))
		}
	}
	sortFilters(out)
	return out, nil
}

func (k *fakeKernel) find(d *fakeDev, f *Filter) (idx int, tpProto uint16, tpExists bool) {
	idx = -1
	for i, g := range d.filters {
		if g.tp() != f.tp() {
			continue
		}
		tpExists, tpProto = true, g.Protocol
		if g.Handle == f.Handle {
			idx = i
		}
	}
	return idx, tpProto, tpExists
}

func (k *fakeKernel) create(dev string, f *Filter, replace bool) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	op := "add"
	if replace {
		op = "replace"
	}
	d, err := k.dev(dev)
	if err != nil {
		return err
	}
	if err := k.write(op, dev); err != nil {
		return err
	}
	if !d.clsact {
		return opError(op, dev, f, syscall.EINVAL)
	}
	if f.Handle == 0 {
		return opError(op, dev, f, syscall.EINVAL)
	}
	idx, proto, exists := k.find(d, f)
	if exists && proto != f.Protocol {
		return opError(op, dev, f, syscall.EINVAL)
	}
	if idx >= 0 && !replace {
		return opError(op, dev, f, syscall.EEXIST)
	}
	// flower refuses two filters with the same key and mask in one tp.
	for i, g := range d.filters {
		if i != idx && g.tp() == f.tp() && !g.Foreign && !f.Foreign && g.matchString() == f.matchString() {
			return opError(op, dev, f, syscall.EEXIST)
		}
	}
	c := cloneFilter(f)
	// A plain device offloads nothing; a switchdev port (SetOffload) holds
	// in hardware what its target matches, unless skip_hw.
	c.InHW, c.InHWCount = false, 0
	if d.offloads != nil && c.Flags&flagSkipHW == 0 && d.offloads.refuses(c) == "" && c.Hook == HookIngress {
		c.InHW, c.InHWCount = true, 1
	}
	if c.Flags&flagSkipSW != 0 && !c.InHW {
		return opError(op, dev, f, syscall.EOPNOTSUPP)
	}
	if idx >= 0 {
		d.filters[idx] = c
	} else {
		d.filters = append(d.filters, c)
	}
	k.changed(dev, d)
	return nil
}

func (k *fakeKernel) add(dev string, f *Filter) error     { return k.create(dev, f, false) }
func (k *fakeKernel) replace(dev string, f *Filter) error { return k.create(dev, f, true) }

func (k *fakeKernel) del(dev string, f *Filter) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	d, err := k.dev(dev)
	if err != nil {
		return err
	}
	if err := k.write("delete", dev); err != nil {
		return err
	}
	idx, _, _ := k.find(d, f)
	if idx < 0 {
		return opError("delete", dev, f, syscall.ENOENT)
	}
	d.filters = append(d.filters[:idx], d.filters[idx+1:]...)
	k.changed(dev, d)
	return nil
}

func (k *fakeKernel) flushChain(dev string, h Hook, chain uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	d, err := k.dev(dev)
	if err != nil {
		return err
	}
	if err := k.write("flush", dev); err != nil {
		return err
	}
	kept := d.filters[:0]
	for _, f := range d.filters {
		if f.Hook != h || f.Chain != chain {
			kept = append(kept, f)
		}
	}
	d.filters = kept
	k.changed(dev, d)
	return nil
}

// opError names the representor, the operation and the filter.
func opError(op, dev string, f *Filter, err error) error {
	if f == nil {
		return fmt.Errorf("tc filter %s on representor %s: %w", op, dev, err)
	}
	return fmt.Errorf("tc filter %s on representor %s %s chain %d pref %d protocol %s handle 0x%x: %w",
		op, dev, f.Hook, f.Chain, f.Prio, ethName(f.Protocol), f.Handle, err)
}

// Send runs a packet through hook h of dev as the kernel would (Trace) and
// counts it on every filter it matched, as the kernel's action counters
// do, so that tests of counters read what traffic did.
func (f *Fake) Send(dev string, h Hook, p Packet, ct *Conntrack) (TraceResult, error) {
	f.k.mu.Lock()
	defer f.k.mu.Unlock()
	d, err := f.k.dev(dev)
	if err != nil {
		return TraceResult{}, err
	}
	res := Trace(d.filters, h, p, ct)
	for _, hit := range res.Hits {
		hit.Packets++
	}
	return res, nil
}

// SetMetrics makes the fake export its filter metrics (filters,
// filters_not_in_hardware) to m, as the netlink driver does to the
// Metrics it is created with.
func (f *Fake) SetMetrics(m *Metrics) { f.metrics = m }
