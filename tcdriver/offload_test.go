package tcdriver

import (
	"context"
	"fmt"
	randv2 "math/rand/v2"
	"sort"
	"strings"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy/policytest"
)

func TestMaskedPortsCoverExactly(t *testing.T) {
	cases := []struct {
		lo, hi uint16
		want   int // blocks
	}{
		{80, 80, 1}, {8000, 8080, 3}, {8000, 8010, 3}, {1, 65535, 16}, {1024, 2047, 1}, {1023, 2048, 3}, {65535, 65535, 1},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%d-%d", c.lo, c.hi), func(t *testing.T) {
			blocks := MaskedPorts(c.lo, c.hi)
			if len(blocks) != c.want {
				t.Errorf("%d blocks %v, want %d", len(blocks), blocks, c.want)
			}
			for port := 0; port <= 65535; port++ {
				n := 0
				for _, b := range blocks {
					if uint16(port)&b.Mask == b.Value {
						n++
					}
				}
				if in := port >= int(c.lo) && port <= int(c.hi); (in && n != 1) || (!in && n != 0) {
					t.Fatalf("port %d matched by %d blocks of %v", port, n, blocks)
				}
			}
		})
	}
}

func TestParseProfile(t *testing.T) {
	for _, c := range []struct{ flag, release, want string }{
		{"auto", "6.1.0-13-amd64", "mlx5-6.1"}, {"auto", "6.3.0", "mlx5-6.3"}, {"", "6.12.117+deb13", "mlx5-6.3"},
		{"auto", "5.15.0-91-generic", "mlx5-6.1"}, {"auto", "", "mlx5-6.1"}, {"auto", "7.0", "mlx5-6.3"},
		{"software", "6.12.0", "software"}, {"mlx5-6.1", "6.12.0", "mlx5-6.1"},
	} {
		got, err := ParseProfile(c.flag, c.release)
		if err != nil || got.Name != c.want {
			t.Errorf("ParseProfile(%q, %q) = %s, %v; want %s", c.flag, c.release, got.Name, err, c.want)
		}
	}
	if _, err := ParseProfile("mlx4", ""); err == nil {
		t.Error("ParseProfile(mlx4) accepted")
	}
}

// TestNoConstructHardwareRefusesIsInHardware: on a hardware profile, no
// filter the profile refuses is installed without skip_hw, and no chain has
// an offloaded filter after a refused one (it would decide in hardware what
// software decides differently).
func TestNoConstructHardwareRefusesIsInHardware(t *testing.T) {
	for _, prof := range []Profile{ProfileMLX561, ProfileMLX563} {
		for name, rs := range goldenRuleSets {
			prog, err := Compile(rs, Options{Profile: prof})
			if err != nil {
				t.Fatal(err)
			}
			fs := prog.Filters()
			sortFilters(fs)
			refusedIn := map[uint32]uint16{}
			for _, f := range fs {
				r := prof.refuses(f)
				if r != "" && f.Flags&flagSkipHW == 0 {
					t.Errorf("%s %s: %s refused (%s) but not skip_hw", prof.Name, name, f, r)
				}
				key := uint32(f.Hook)<<31 | f.Chain
				if pr, ok := refusedIn[key]; ok && f.Prio > pr && f.Flags&flagSkipHW == 0 {
					t.Errorf("%s %s: %s is offloaded after a refused filter at pref %d", prof.Name, name, f, pr)
				}
				if r != "" {
					if _, ok := refusedIn[key]; !ok {
						refusedIn[key] = f.Prio
					}
				}
			}
		}
	}
}

// TestOffloadedOnlyNeverDisagrees is the first step of the eswitch model:
// over the random clusters of policytest, every attachment's rule set is
// compiled for each hardware profile and every probe is traced twice, in
// software (the whole pipeline must decide as policy.Evaluate, the
// reference evaluator) and through the offloaded filters only. Whenever the
// offloaded filters decide, they must decide the same; what they do not
// decide falls to software, and the test reports why.
//
// The same probes over the pipelines of the software profile (port ranges,
// ct_state +new), judged by the mlx5-6.1 profile, must disagree: that is
// the silent hardware divergence the profiles remove.
func TestOffloadedOnlyNeverDisagrees(t *testing.T) {
	const seed = 1111
	for _, prof := range []Profile{ProfileMLX561, ProfileMLX563} {
		t.Run(prof.Name, func(t *testing.T) {
			rng := randv2.New(randv2.NewPCG(seed, 0))
			probes, hwPass, hwDrop, oldWrong := 0, 0, 0, 0
			toSoftware := map[string]int{}
			for sc := 0; sc < 120; sc++ {
				s := policytest.Generate(rng, policytest.Config{Invalid: sc%3 == 0})
				eng := s.Engine()
				for _, att := range s.Attachments {
					rs, _ := eng.Compute(att)
					fake := NewFake(Options{Profile: prof}, dev)
					old := NewFake(Options{}, dev)
					if err := fake.Apply(context.Background(), dev, rs); err != nil {
						t.Fatal(err)
					}
					if err := old.Apply(context.Background(), dev, rs); err != nil {
						t.Fatal(err)
					}
					for i := 0; i < 10; i++ {
						pp := s.RandomPacket(rng, att)
						want := s.Reference(att, pp)
						h := hookOf(pp.Direction)
						pkt := toTC(pp, 40000)
						probes++
						if sw := Trace(fake.Filters(dev, h), h, pkt, NewConntrack()); (sw.Verdict == Pass) != want {
							t.Fatalf("scenario %d %s %+v: the %s pipeline in software %s, policy allows=%v", sc, att, pp, prof.Name, sw, want)
						}
						hw := TraceOffloaded(prof, fake.Filters(dev, h), h, pkt, NewConntrack())
						if !hw.Decided {
							toSoftware[softwareReason(prof, fake.Filters(dev, h), h, hw)]++
						} else {
							if (hw.Verdict == Pass) != want {
								t.Fatalf("scenario %d %s %+v: offloaded filters %s, policy allows=%v\nrule set %+v", sc, att, pp, hw.TraceResult, want, rs)
							}
							if want {
								hwPass++
							} else {
								hwDrop++
							}
						}
						if hwOld := TraceOffloaded(prof, old.Filters(dev, h), h, pkt, NewConntrack()); hwOld.Decided && (hwOld.Verdict == Pass) != want {
							oldWrong++
						}
					}
				}
			}
			if probes < 5000 || hwPass == 0 || hwDrop == 0 {
				t.Fatalf("too weak: %d probes, %d passed and %d dropped in hardware", probes, hwPass, hwDrop)
			}
			if oldWrong == 0 {
				t.Errorf("the software-profile pipelines never disagreed in hardware: the check has no teeth")
			}
			var reasons []string
			for r, n := range toSoftware {
				reasons = append(reasons, fmt.Sprintf("%d %s", n, r))
			}
			sort.Strings(reasons)
			t.Logf("%s: %d probes; decided by offloaded filters: %d pass, %d drop, all as policy.Evaluate; fell to software: %s; "+
				"software-profile pipelines judged by this profile: %d wrong hardware verdicts",
				prof.Name, probes, hwPass, hwDrop, strings.Join(reasons, ", "), oldWrong)
		})
	}
}

// softwareReason is why a packet the offloaded filters did not decide goes
// to software: the first filter the profile refuses in the chain that
// missed.
func softwareReason(prof Profile, filters []*Filter, h Hook, hw HardwareResult) string {
	if h == HookEgress {
		return "representor egress hook (pod ingress: mlx5 offloads the ingress hook only)"
	}
	sortFilters(filters)
	for _, f := range filters {
		if f.Chain == hw.MissChain {
			if why := prof.refuses(f); why != "" {
				return why
			}
		}
	}
	return fmt.Sprintf("chain %d: no refused filter", hw.MissChain)
}
