package tcdriver

import (
	"context"
	"errors"
	"math/rand"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// verdicts traces a fixed packet sample through dev.
func verdicts(f *Fake, rng *rand.Rand, n int) []Verdict {
	var out []Verdict
	for i := 0; i < n; i++ {
		pp, p := randPacket(rng)
		h := hookOf(pp.Direction)
		out = append(out, Trace(f.Filters(dev, h), h, p, NewConntrack()).Verdict)
	}
	return out
}

func equalVerdicts(a, b []Verdict) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestFailedApplyNeverMixes injects a kernel failure at every write of an
// update: the representor enforces exactly the old rules or exactly the
// new ones, never a mix, and the next successful apply converges.
func TestFailedApplyNeverMixes(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	ctx := context.Background()
	for c := 0; c < 24; c++ {
		old, next := randRuleSet(rng), randRuleSet(rng)
		if c%2 == 0 {
			next = mutate(rng, old) // often in place
		}
		ref := NewFake(Options{}, dev)
		if err := ref.Apply(ctx, dev, next); err != nil {
			t.Fatal(err)
		}
		for k := 0; ; k += 1 + k/6 { // every early write, then a sample
			f := NewFake(Options{}, dev)
			if err := f.Apply(ctx, dev, old); err != nil {
				t.Fatal(err)
			}
			seed := rng.Int63()
			vOld := verdicts(f, rand.New(rand.NewSource(seed)), 40)
			vNew := verdicts(ref, rand.New(rand.NewSource(seed)), 40)
			f.FailAfter(k)
			err := f.Apply(ctx, dev, next)
			f.FailAfter(-1)
			if err == nil {
				break // k beyond the number of writes
			}
			if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), dev) {
				t.Fatalf("error does not name the representor or lost the errno: %v", err)
			}
			got := verdicts(f, rand.New(rand.NewSource(seed)), 40)
			if !equalVerdicts(got, vOld) && !equalVerdicts(got, vNew) {
				t.Fatalf("case %d: failure at write %d left a mix of old and new rules", c, k)
			}
			if err := f.Apply(ctx, dev, next); err != nil {
				t.Fatal(err)
			}
			if !sameKeys(keysOf(f, f.opts), keysOf(ref, ref.opts)) {
				t.Fatalf("case %d: apply after failure at write %d did not converge", c, k)
			}
		}
	}
}

func TestRefusesInexpressibleRuleSets(t *testing.T) {
	good := &policy.RuleSet{Ingress: policy.DirectionRules{Isolated: true, Stateful: true,
		Rules: []policy.Rule{{AnyPeer: true, Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 80, EndPort: 80}}}}}}
	bad := map[string]policy.DirectionRules{
		"unknown protocol": {Isolated: true, Stateful: true, Rules: []policy.Rule{{AnyPeer: true, Ports: []policy.PortMatch{{Protocol: "GRE"}}}}},
		"endPort below":    {Isolated: true, Stateful: true, Rules: []policy.Rule{{AnyPeer: true, Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 90, EndPort: 80}}}}},
		"host bits":        {Isolated: true, Stateful: true, Rules: []policy.Rule{{Peers: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24")}}}},
		"no peer":          {Isolated: true, Stateful: true, Rules: []policy.Rule{{}}},
		"stateless":        {Isolated: true},
	}
	for name, d := range bad {
		t.Run(name, func(t *testing.T) {
			f := NewFake(Options{}, dev)
			ctx := context.Background()
			if err := f.Apply(ctx, dev, good); err != nil {
				t.Fatal(err)
			}
			before, _ := f.Dump(ctx, dev)
			err := f.Apply(ctx, dev, &policy.RuleSet{Attachment: att("x"), Ingress: d})
			if err == nil || !strings.Contains(err.Error(), dev) || !strings.Contains(err.Error(), "demo/x") {
				t.Fatalf("want a refusal naming the representor and attachment, got %v", err)
			}
			after, _ := f.Dump(ctx, dev)
			if before.Canonical() != after.Canonical() {
				t.Fatal("refused rule set changed the representor")
			}
		})
	}
}

func TestMissingRepresentor(t *testing.T) {
	f := NewFake(Options{}, dev)
	err := f.Apply(context.Background(), "rep9", goldenRuleSets["default-deny"])
	if !errors.Is(err, ErrNoDevice) || !strings.Contains(err.Error(), "rep9") {
		t.Fatalf("got %v", err)
	}
}

func TestOffloadFlagsAndMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	f := NewFake(Options{Offload: OffloadSoftware}, dev)
	f.metrics = m
	if err := f.Apply(context.Background(), dev, goldenRuleSets["default-deny"]); err != nil {
		t.Fatal(err)
	}
	st, _ := f.Dump(context.Background(), dev)
	for _, flt := range st.Ours() {
		if flt.Flags != flagSkipHW {
			t.Fatalf("filter without skip_hw: %s", flt)
		}
	}
	inHW, total := st.InHWCount()
	if inHW != 0 || total != 42 {
		t.Fatalf("in_hw %d/%d", inHW, total)
	}
	var metric dto.Metric
	if err := m.filters.WithLabelValues(dev, "egress", "false").Write(&metric); err != nil {
		t.Fatal(err)
	}
	if got := metric.GetGauge().GetValue(); got != 21 {
		t.Fatalf("metric egress not in hw = %v, want 21", got)
	}
	// skip_sw on a port that cannot offload is refused, like the kernel
	// does (no mode installs it any more; a foreign tool's could).
	g := NewFake(Options{}, dev)
	skipSW := &Filter{Hook: HookIngress, Chain: 0, Prio: 10, Protocol: EthIPv4, Handle: 1, Flags: flagSkipSW, Actions: []Action{{Kind: ActAccept}}}
	if err := g.AddForeign(dev, skipSW); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Fatalf("skip_sw on the fake: %v", err)
	}
	if _, err := ParseOffload("sometimes"); err == nil {
		t.Fatal("bad --tc-offload accepted")
	}
}

// TestForeignFiltersUntouched: Apply and Remove never touch filters the
// driver did not install.
func TestForeignFiltersUntouched(t *testing.T) {
	f := NewFake(Options{}, dev)
	ctx := context.Background()
	foreign := []*Filter{
		{Hook: HookIngress, Chain: 0, Prio: 10, Protocol: EthIPv4, Handle: 1, Match: Match{IPProto: ProtoUDP}, Actions: []Action{{Kind: ActAccept}}},
		{Hook: HookEgress, Chain: 7, Prio: 1, Protocol: EthAll, Handle: 1, Kind: "matchall"},
		{Hook: HookIngress, Chain: 0, Prio: DefaultEntryPrio, Protocol: EthAll, Handle: 2, Actions: []Action{{Kind: ActDrop}}},
	}
	for _, fl := range foreign {
		if err := f.AddForeign(dev, fl); err != nil {
			t.Fatal(err)
		}
	}
	for _, rs := range []*policy.RuleSet{goldenRuleSets["ipv6"], goldenRuleSets["default-deny"], {}} {
		if err := f.Apply(ctx, dev, rs); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Apply(ctx, dev, goldenRuleSets["ipv6"]); err != nil {
		t.Fatal(err)
	}
	if err := f.Remove(ctx, dev); err != nil {
		t.Fatal(err)
	}
	st, _ := f.Dump(ctx, dev)
	if len(st.Filters) != len(foreign) {
		t.Fatalf("want only the %d foreign filters, got:\n%s", len(foreign), st.Canonical())
	}
}
