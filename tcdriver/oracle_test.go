package tcdriver

import (
	"context"
	randv2 "math/rand/v2"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy/policytest"
)

// TestTracerMatchesReferenceEvaluator: random clusters (pods, namespaces,
// NADs, policies, some invalid) from policytest; every attachment's rule
// set is computed by the policy engine, installed in the fake and traced;
// the verdict must equal the reference evaluator's, which reads the API
// objects directly.
func TestTracerMatchesReferenceEvaluator(t *testing.T) {
	const seed = 4242
	rng := randv2.New(randv2.NewPCG(seed, 0))
	cases := 0
	for sc := 0; sc < 120; sc++ {
		s := policytest.Generate(rng, policytest.Config{Invalid: sc%3 == 0})
		eng := s.Engine()
		for _, att := range s.Attachments {
			rs, _ := eng.Compute(att) // input errors still yield the fail-closed rule set
			if rs == nil {
				t.Fatalf("seed %d scenario %d: no rule set for %s", seed, sc, att)
			}
			fake := NewFake(Options{}, dev)
			if err := fake.Apply(context.Background(), dev, rs); err != nil {
				t.Fatalf("seed %d scenario %d %s: %v", seed, sc, att, err)
			}
			for i := 0; i < 10; i++ {
				pp := s.RandomPacket(rng, att)
				want := s.Reference(att, pp)
				h := hookOf(pp.Direction)
				got := Trace(fake.Filters(dev, h), h, toTC(pp, 40000), NewConntrack())
				cases++
				if (got.Verdict == Pass) != want {
					st, _ := fake.Dump(context.Background(), dev)
					t.Fatalf("seed %d scenario %d %s packet %+v: tracer %s, reference allows=%v\nrule set %+v\n%s",
						seed, sc, att, pp, got, want, rs, st.Canonical())
				}
			}
		}
	}
	if cases < 5000 {
		t.Fatalf("only %d cases", cases)
	}
	t.Logf("%d packets agreed with the reference evaluator", cases)
}

var _ = policy.Ingress
