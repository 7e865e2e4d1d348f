package tcdriver

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

func TestParseOffload(t *testing.T) {
	for _, c := range []struct {
		flag string
		want Offload
	}{
		{"", OffloadAuto}, {"auto", OffloadAuto},
		{"required", OffloadRequired}, {"skip-sw", OffloadRequired},
		{"software", OffloadSoftware}, {"skip-hw", OffloadSoftware},
	} {
		got, err := ParseOffload(c.flag)
		if err != nil || got != c.want {
			t.Errorf("ParseOffload(%q) = %q, %v; want %q", c.flag, got, err, c.want)
		}
	}
	for _, bad := range []string{"always", "skip_sw", "Required", "hw"} {
		if _, err := ParseOffload(bad); err == nil || !strings.Contains(err.Error(), "--tc-offload") || !strings.Contains(err.Error(), bad) {
			t.Errorf("ParseOffload(%q): %v, want an error naming the flag and the value", bad, err)
		}
	}
}

// TestNoModeInstallsSkipSW: required installs what auto does (skip_sw
// would fail open on mlx5, see OffloadRequired); software puts skip_hw on
// every filter.
func TestNoModeInstallsSkipSW(t *testing.T) {
	for _, prof := range Profiles {
		for name, rs := range goldenRuleSets {
			auto, _ := Compile(rs, Options{Profile: prof})
			req, _ := Compile(rs, Options{Profile: prof, Offload: OffloadRequired})
			sw, _ := Compile(rs, Options{Profile: prof, Offload: OffloadSoftware})
			a, q := auto.Filters(), req.Filters()
			for i := range a {
				if a[i].String() != q[i].String() {
					t.Fatalf("%s %s: required installs %s where auto installs %s", prof.Name, name, q[i], a[i])
				}
				if q[i].Flags&flagSkipSW != 0 {
					t.Fatalf("%s %s: skip_sw on %s", prof.Name, name, q[i])
				}
			}
			for _, f := range sw.Filters() {
				if f.Flags != flagSkipHW {
					t.Fatalf("%s %s software: %s without skip_hw alone", prof.Name, name, f)
				}
			}
		}
	}
}

// closedCanon is what a representor programmed with the closed rule set
// of att holds.
func closedCanon(t *testing.T, opts Options, att policy.Attachment) string {
	t.Helper()
	f := NewFake(opts, dev)
	if err := f.Apply(context.Background(), dev, closedRuleSet(att, true)); err != nil {
		t.Fatal(err)
	}
	return canon(t, f, dev)
}

// TestOffloadModesAlone: a representor programmed alone, per mode and
// device: required programs what is all in hardware and refuses (closes,
// NotInHardwareError naming the representor and the pod) what is not;
// auto programs and reports; software expects nothing in hardware.
func TestOffloadModesAlone(t *testing.T) {
	rs := goldenRuleSets["ipv6"] // web-0, isolated both ways with rules
	prof := ProfileMLX563
	for _, c := range []struct {
		name       string
		mode       Offload
		offloads   bool // the device is a switchdev port offloading prof
		rs         *policy.RuleSet
		refused    bool
		notInHW    bool // reasonNotOffloaded > 0
		allSkipHW  bool
		softwareBy string // the reason every filter is counted under
	}{
		{name: "required offloaded", mode: OffloadRequired, offloads: true, rs: rs},
		{name: "required not offloaded", mode: OffloadRequired, rs: rs, refused: true, notInHW: true},
		{name: "required closed rule set", mode: OffloadRequired, rs: goldenRuleSets["default-deny"], notInHW: true},
		{name: "auto not offloaded", mode: OffloadAuto, rs: rs, notInHW: true},
		{name: "auto offloaded", mode: OffloadAuto, offloads: true, rs: rs},
		{name: "software", mode: OffloadSoftware, offloads: true, rs: rs, allSkipHW: true, softwareBy: reasonSoftwareMode},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := Options{Profile: prof, Offload: c.mode}
			f := NewFake(opts, dev)
			f.metrics = NewMetrics(prometheus.NewRegistry())
			if c.offloads {
				f.SetOffload(dev, prof)
			}
			err := f.Apply(context.Background(), dev, c.rs)
			var nih *NotInHardwareError
			switch {
			case c.refused:
				if !errors.As(err, &nih) {
					t.Fatalf("want a NotInHardwareError, got %v", err)
				}
				if nih.Dev != dev || nih.Pod != "demo/web-0" || nih.Missing == 0 || nih.Reasons[reasonNotOffloaded] != nih.Missing || nih.On[dev] != nih.Missing {
					t.Errorf("error %+v", nih)
				}
				for _, want := range []string{dev, "demo/web-0", "not in hardware", "required", "closed", "fix:"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not say %q", err, want)
					}
				}
				if got, want := canon(t, f, dev), closedCanon(t, opts, c.rs.Attachment); got != want {
					t.Errorf("refused representor not closed:\n%s\nwant\n%s", got, want)
				}
				if f.Applied()[dev].Ingress.Rules != nil {
					t.Errorf("Applied reports the refused rule set")
				}
			case err != nil:
				t.Fatalf("Apply: %v", err)
			default:
				want := NewFake(Options{Profile: prof, Offload: c.mode}, dev)
				if c.offloads {
					want.SetOffload(dev, prof)
				}
				if err := want.Apply(context.Background(), dev, c.rs); err != nil {
					t.Fatal(err)
				}
				if canon(t, f, dev) != canon(t, want, dev) {
					t.Errorf("not the rule set's filters")
				}
			}
			st, _ := f.Dump(context.Background(), dev)
			missing := testutil.ToFloat64(f.metrics.notInHW.WithLabelValues(dev, reasonNotOffloaded))
			if (missing > 0) != c.notInHW {
				t.Errorf("metric %s = %v, want >0: %v", reasonNotOffloaded, missing, c.notInHW)
			}
			if c.allSkipHW {
				for _, fl := range st.Ours() {
					if fl.Flags&flagSkipHW == 0 || fl.InHW {
						t.Errorf("software: %s", fl)
					}
				}
				if n := testutil.ToFloat64(f.metrics.notInHW.WithLabelValues(dev, c.softwareBy)); int(n) != len(st.Ours()) {
					t.Errorf("%d filters counted under %q, want %d", int(n), c.softwareBy, len(st.Ours()))
				}
			}
		})
	}
}

// TestRequiredRefusedRetried: a representor refused for offload takes its
// rules once its device offloads them.
func TestRequiredRefusedRetried(t *testing.T) {
	rs := goldenRuleSets["ipv6"]
	f := NewFake(Options{Profile: ProfileMLX563, Offload: OffloadRequired}, dev)
	var nih *NotInHardwareError
	if err := f.Apply(context.Background(), dev, rs); !errors.As(err, &nih) {
		t.Fatalf("first apply: %v", err)
	}
	// Retried while the device still offloads nothing: it stays closed,
	// and its rules are not installed again to find out (no add: the
	// closed filters are offered to the hardware again, by replace).
	closed := canon(t, f, dev)
	if err := f.Apply(context.Background(), dev, rs); !errors.As(err, &nih) {
		t.Fatalf("retry while broken: %v", err)
	}
	if w := f.LastApply(); w.Adds+w.Deletes+w.Flushes != 0 || w.Replaces == 0 || canon(t, f, dev) != closed {
		t.Errorf("retry while broken: %+v, rules\n%s", w, canon(t, f, dev))
	}
	// The operator fixes the port; filters added from now on offload.
	f.SetOffload(dev, ProfileMLX563)
	if err := f.Apply(context.Background(), dev, rs); err != nil {
		t.Fatalf("after the fix: %v", err)
	}
	if f.Applied()[dev] != rs {
		t.Error("the rule set is not applied after the fix")
	}
}

// TestInHardwareBothWays: filters in hardware that the placement keeps in
// software, or with more copies than one port, are reported by reason.
func TestInHardwareBothWays(t *testing.T) {
	opts := Options{Profile: ProfileMLX563}.withDefaults()
	expected := &Filter{Hook: HookIngress, Chain: 0, Prio: 1, Protocol: EthAll, Cookie: Cookie, Kind: "flower"}
	egress := &Filter{Hook: HookEgress, Chain: 0, Prio: 1, Protocol: EthAll, Cookie: Cookie, Kind: "flower"}
	copyOf := func(f *Filter, inHW bool, n uint32) *Filter {
		c := cloneFilter(f)
		c.InHW, c.InHWCount = inHW, n
		return c
	}
	st := &State{Filters: []*Filter{
		copyOf(expected, true, 1),  // as expected
		copyOf(expected, true, 0),  // an old kernel: in_hw without a count
		copyOf(expected, false, 0), // missing
		copyOf(expected, true, 2),  // two copies
		copyOf(egress, true, 1),    // in hardware, expected in software
		copyOf(egress, false, 0),   // in software by design
	}}
	c := opts.checkInHW(st)
	want := map[string]int{reasonNotOffloaded: 1, reasonExtraCopies: 1, reasonUnexpectedInHW: 1,
		"representor egress hook (mlx5 offloads the ingress hook only)": 1}
	if len(c.missing) != 1 || len(c.reasons) != len(want) {
		t.Fatalf("missing %d, reasons %v; want 1, %v", len(c.missing), c.reasons, want)
	}
	for why, n := range want {
		if c.reasons[why] != n {
			t.Errorf("%q: %d, want %d", why, c.reasons[why], n)
		}
	}
}

// requiredBridgeFake is a fake of testBridge's ports in required mode
// whose devices offload what prof matches, except those in plain (nothing)
// and those in other (other's profile).
func requiredBridgeFake(prof Profile, plain []string, other map[string]Profile) *Fake {
	fake := NewFake(Options{Profile: prof, Offload: OffloadRequired}, "up0", "rep1", "rep2", "rep3")
	fake.metrics = NewMetrics(prometheus.NewRegistry())
	for _, d := range []string{"up0", "rep1", "rep2", "rep3"} {
		switch p, ok := other[d]; {
		case ok:
			fake.SetOffload(d, p)
		case !contains(plain, d):
			fake.SetOffload(d, prof)
		}
	}
	return fake
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// TestRequiredBridge: --tc-offload=required on the bridge placement: a pod
// whose filters (on its port, or its section on another port) are not all
// in hardware is refused like an unenforceable port (PortError wrapping a
// NotInHardwareError naming its representor and pod) and closed; the other
// pods keep their rules.
func TestRequiredBridge(t *testing.T) {
	prof := ProfileMLX563
	for _, c := range []struct {
		name    string
		plain   []string
		other   map[string]Profile
		refused []string
		on      string // where the refused pods' filters are missing
	}{
		{name: "all offloaded"},
		{name: "a representor offloads nothing", plain: []string{"rep2"}, refused: []string{"rep2"}, on: "rep2"},
		// The uplink of a mlx5-6.1 NIC refuses ct_state +new: only db's
		// section (its isolated ingress) has it there.
		{name: "the uplink misses one pod's section", other: map[string]Profile{"up0": ProfileMLX561}, refused: []string{"rep1"}, on: "up0"},
		// Every pod's traffic crosses the uplink's shared filters.
		{name: "the uplink offloads nothing", plain: []string{"up0"}, refused: []string{"rep1", "rep2", "rep3"}, on: "up0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fake := requiredBridgeFake(prof, c.plain, c.other)
			b := testBridge()
			err := fake.ApplyBridge(context.Background(), b)
			ports, rest := PortErrors(err)
			if len(rest) > 0 {
				t.Fatalf("errors beyond ports: %v", rest)
			}
			if len(ports) != len(c.refused) {
				t.Fatalf("refused %v, want %v", ports, c.refused)
			}
			given := map[string]*policy.RuleSet{}
			for _, pt := range b.Ports {
				given[pt.Dev] = pt.RuleSet
			}
			enforced := map[string]*policy.RuleSet{}
			for _, fb := range fake.Bridges() {
				for _, pt := range fb.Ports {
					enforced[pt.Dev] = pt.RuleSet
				}
			}
			for _, dev := range c.refused {
				var nih *NotInHardwareError
				if !errors.As(ports[dev], &nih) {
					t.Fatalf("%s: want a NotInHardwareError, got %v", dev, ports[dev])
				}
				if nih.Dev != dev || nih.Pod != given[dev].Attachment.PodNamespace+"/"+given[dev].Attachment.PodName || nih.On[c.on] == 0 {
					t.Errorf("%s: %+v", dev, nih)
				}
				if !closedLike(enforced[dev]) {
					t.Errorf("%s: refused but enforces %+v", dev, enforced[dev])
				}
			}
			for dev, rs := range given {
				if ports[dev] == nil && enforced[dev] != rs {
					t.Errorf("%s: not refused, but its rule set changed", dev)
				}
			}
			// The ports hold exactly the bridge with the refused pods
			// closed, as auto mode programs it.
			want := testBridge()
			for i := range want.Ports {
				if ports[want.Ports[i].Dev] != nil {
					want.Ports[i].RuleSet = closedRuleSet(want.Ports[i].RuleSet.Attachment, true)
				}
			}
			// (after the same history: the bridge as given, then with
			// the refused pods closed).
			ref := NewFake(Options{Profile: prof}, "up0", "rep1", "rep2", "rep3")
			for _, rb := range []*Bridge{testBridge(), want} {
				if err := ref.ApplyBridge(context.Background(), rb); err != nil {
					t.Fatal(err)
				}
			}
			for _, d := range []string{"up0", "rep1", "rep2", "rep3"} {
				if canon(t, fake, d) != canon(t, ref, d) {
					t.Errorf("%s holds other filters than the bridge with %v closed", d, c.refused)
				}
			}
			// Nothing that still runs its own rules misses hardware.
			for _, fb := range fake.Bridges() {
				if again := fake.offloadRefusals(fb, map[string]bool{}, nil); len(again) > 0 {
					for dev := range again {
						if ports[dev] == nil {
							t.Errorf("%s runs its rules with filters not in hardware", dev)
						}
					}
				}
			}
		})
	}
}

// TestAutoAndSoftwareBridge: auto programs every pod and reports what is
// not in hardware; software expects nothing there.
func TestAutoAndSoftwareBridge(t *testing.T) {
	for _, mode := range []Offload{OffloadAuto, OffloadSoftware} {
		fake := NewFake(Options{Profile: ProfileMLX563, Offload: mode}, "up0", "rep1", "rep2", "rep3")
		fake.metrics = NewMetrics(prometheus.NewRegistry())
		fake.SetOffload("up0", ProfileMLX563) // the representors offload nothing
		if err := fake.ApplyBridge(context.Background(), testBridge()); err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		missing := testutil.ToFloat64(fake.metrics.notInHW.WithLabelValues("rep1", reasonNotOffloaded))
		if (missing > 0) != (mode == OffloadAuto) {
			t.Errorf("%s: rep1 missing %v", mode, missing)
		}
		if mode == OffloadSoftware {
			for _, d := range []string{"up0", "rep1", "rep2", "rep3"} {
				st, _ := fake.Dump(context.Background(), d)
				for _, f := range st.Ours() {
					if f.Flags&flagSkipHW == 0 || f.InHW {
						t.Errorf("software: %s %s", d, f)
					}
				}
			}
		}
	}
}

// TestRequiredBridgeFixed: once the devices offload, the next apply takes
// every pod's rules, whichever device was broken: the filters installed
// while it was (and unchanged since: an uplink's shared filters) are
// offered to the hardware again.
func TestRequiredBridgeFixed(t *testing.T) {
	prof := ProfileMLX563
	for _, broken := range []string{"up0", "rep2"} {
		t.Run(broken, func(t *testing.T) {
			fake := requiredBridgeFake(prof, []string{broken}, nil)
			if err := fake.ApplyBridge(context.Background(), testBridge()); err == nil {
				t.Fatal("nothing refused")
			}
			// Retried while still broken: the refused ports stay closed
			// and their rules are not installed to find out.
			before := map[string]string{}
			for _, d := range []string{"up0", "rep1", "rep2", "rep3"} {
				before[d] = canon(t, fake, d)
			}
			if err := fake.ApplyBridge(context.Background(), testBridge()); err == nil {
				t.Fatal("nothing refused on the retry")
			}
			if w := fake.LastApply(); w.Adds+w.Deletes+w.Flushes != 0 {
				t.Errorf("retry while broken changed rules: %+v", w)
			}
			for d, c := range before {
				if canon(t, fake, d) != c {
					t.Errorf("retry while broken changed %s", d)
				}
			}
			fake.SetOffload(broken, prof)
			if err := fake.ApplyBridge(context.Background(), testBridge()); err != nil {
				t.Fatalf("after the fix: %v", err)
			}
			for _, fb := range fake.Bridges() {
				for _, pt := range fb.Ports {
					if closedLike(pt.RuleSet) {
						t.Errorf("%s still closed after the fix", pt.Dev)
					}
				}
			}
			for _, d := range []string{"up0", "rep1", "rep2", "rep3"} {
				st, _ := fake.Dump(context.Background(), d)
				if missing, _ := NotInHardware(st, prof); missing != 0 {
					t.Errorf("%s: %d filters still not in hardware", d, missing)
				}
			}
		})
	}
}

// TestRequiredCloseFails: a refused representor whose closing the kernel
// refuses is reported as what it is, a failure that keeps its rules (in
// software), not as a closed port.
func TestRequiredCloseFails(t *testing.T) {
	rs := goldenRuleSets["ipv6"]
	twin := NewFake(Options{Profile: ProfileMLX563}, dev)
	if err := twin.Apply(context.Background(), dev, rs); err != nil {
		t.Fatal(err)
	}
	st, _ := twin.Dump(context.Background(), dev)
	missing, _ := NotInHardware(st, ProfileMLX563)
	f := NewFake(Options{Profile: ProfileMLX563, Offload: OffloadRequired}, dev)
	f.FailAfter(twin.Stats().Adds + missing) // the first write of the closing
	err := f.Apply(context.Background(), dev, rs)
	var nih *NotInHardwareError
	if err == nil || errors.As(err, &nih) || !strings.Contains(err.Error(), "closing it failed") || !strings.Contains(err.Error(), dev) {
		t.Fatalf("want a plain error saying the closing failed, got %v", err)
	}
	if f.Applied()[dev] != rs {
		t.Error("Applied does not report the rules the port keeps")
	}
}
