package policy_test

import (
	"flag"
	"math/rand/v2"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy/policytest"
)

var (
	propertySeed      = flag.Uint64("property.seed", 0, "seed of the first scenario (0: fixed default)")
	propertyScenarios = flag.Int("property.scenarios", 400, "random scenarios per run")
)

// TestRuleSetsMatchReferenceEvaluator is the oracle property: for random
// clusters and random packets, the computed rule set and the reference
// evaluator must agree. Each scenario checks every attachment with several
// packets; a run checks well over 5,000 (attachment, packet) cases.
func TestRuleSetsMatchReferenceEvaluator(t *testing.T) {
	base := *propertySeed
	if base == 0 {
		base = 20261128
	}
	cases := 0
	for i := range *propertyScenarios {
		seed := base + uint64(i)
		rng := rand.New(rand.NewPCG(seed, 0))
		s := policytest.Generate(rng, policytest.Config{Invalid: true})
		e := s.Engine()
		for _, att := range s.Attachments {
			rs, _ := e.Compute(att)
			if rs == nil {
				t.Fatalf("seed %d: %s: no rule set", seed, att)
			}
			for range 20 {
				pkt := s.RandomPacket(rng, att)
				got, want := rs.Allows(pkt), s.Reference(att, pkt)
				cases++
				if got != want {
					t.Fatalf("seed %d (rerun: -property.seed=%d -property.scenarios=1): %s %+v: rule set says %v, reference says %v\nrule set: %s\npolicies: %s",
						seed, seed, att, pkt, got, want, dumpJSON(rs), dumpJSON(s.Objects.Policies))
				}
				// explain's "allowed by": a named rule means allowed, and an
				// isolated direction allowed other than by an ICMP flag
				// has one.
				by := policy.AllowedBy(&s.Objects, s.Options, att, pkt)
				icmpFlag := (pkt.Protocol == policy.ICMP && s.Options.AcceptICMP) || (pkt.Protocol == policy.ICMPv6 && s.Options.AcceptICMPv6)
				if (len(by) > 0 && !want) || (want && rs.Direction(pkt.Direction).Isolated && !icmpFlag && len(by) == 0) {
					t.Fatalf("seed %d (rerun: -property.seed=%d -property.scenarios=1): %s %+v: allowed %v but AllowedBy %q\nrule set: %s",
						seed, seed, att, pkt, want, by, dumpJSON(rs))
				}
			}
		}
	}
	if cases < 5000 {
		t.Fatalf("only %d cases checked; want >= 5000", cases)
	}
	t.Logf("%d (attachment, packet) cases agree", cases)
}

// TestChangeImpactIsComplete checks the indexes behind the Upsert return
// values: after a random object change, every attachment whose rule set
// changed must have been reported as affected.
func TestChangeImpactIsComplete(t *testing.T) {
	for i := range 100 {
		seed := uint64(7000 + i)
		rng := rand.New(rand.NewPCG(seed, 1))
		s := policytest.Generate(rng, policytest.Config{})
		e := s.Engine()
		before := computeAll(t, e)
		for range 5 {
			before = checkOneChange(t, seed, rng, s, e, before)
		}
	}
}

// checkOneChange mutates one object of s, applies it to e, and checks the
// engine's answer and reported impact; it returns the new rule sets.
func checkOneChange(t *testing.T, seed uint64, rng *rand.Rand, s *policytest.Scenario, e *policy.Engine, before map[string]*policy.RuleSet) map[string]*policy.RuleSet {
	t.Helper()
	// Mutate one object: a pod's labels, a namespace's labels, or a
	// policy replaced by another scenario's.
	var affected []policy.Attachment
	switch rng.IntN(5) {
	case 3: // a pod stops (or starts) running
		i := rng.IntN(len(s.Objects.Pods))
		p := s.Objects.Pods[i].DeepCopy()
		p.Status.Phase = map[bool]corev1.PodPhase{true: corev1.PodSucceeded, false: corev1.PodRunning}[p.Status.Phase == corev1.PodRunning]
		s.Objects.Pods[i] = p
		affected = e.UpsertPod(p)
	case 4: // a pod is deleted
		i := rng.IntN(len(s.Objects.Pods))
		p := s.Objects.Pods[i]
		s.Objects.Pods = slices.Delete(s.Objects.Pods, i, i+1)
		affected = e.DeletePod(p.Namespace, p.Name)
	case 0:
		i := rng.IntN(len(s.Objects.Pods))
		p := s.Objects.Pods[i].DeepCopy()
		p.Labels = map[string]string{"app": []string{"web", "db", "cache"}[rng.IntN(3)]}
		s.Objects.Pods[i] = p
		affected = e.UpsertPod(p)
	case 1:
		i := rng.IntN(len(s.Objects.Namespaces))
		ns := s.Objects.Namespaces[i].DeepCopy()
		ns.Labels = map[string]string{"team": []string{"a", "b"}[rng.IntN(2)]}
		s.Objects.Namespaces[i] = ns
		affected = e.UpsertNamespace(ns)
	default:
		other := policytest.Generate(rand.New(rand.NewPCG(seed, rng.Uint64())), policytest.Config{})
		i := rng.IntN(len(s.Objects.Policies))
		p := other.Objects.Policies[0].DeepCopy()
		p.Name = s.Objects.Policies[i].Name
		p.Namespace = s.Objects.Policies[i].Namespace
		s.Objects.Policies[i] = p
		affected = e.UpsertPolicy(p)
	}
	after := computeAll(t, e)
	reported := map[string]bool{}
	for _, a := range affected {
		reported[a.ID()] = true
	}
	// The updated engine (with its caches) must agree with a fresh one.
	fresh := computeAll(t, s.Engine())
	for id, rs := range after {
		if dumpJSON(rs) != dumpJSON(fresh[id]) {
			t.Fatalf("seed %d: %s: incremental result differs from a fresh engine:\n%s\nvs\n%s", seed, id, dumpJSON(rs), dumpJSON(fresh[id]))
		}
		if dumpJSON(rs) != dumpJSON(before[id]) && !reported[id] {
			t.Fatalf("seed %d: %s changed but was not reported as affected", seed, id)
		}
	}
	return after
}

func computeAll(t *testing.T, e *policy.Engine) map[string]*policy.RuleSet {
	t.Helper()
	rss, _ := e.ComputeAll()
	out := map[string]*policy.RuleSet{}
	for _, rs := range rss {
		rs.Ingress.Policies, rs.Egress.Policies = nil, nil
		for _, d := range []*policy.DirectionRules{&rs.Ingress, &rs.Egress} {
			for i := range d.Rules {
				d.Rules[i].Origins = nil
			}
		}
		out[rs.Attachment.ID()] = rs
	}
	return out
}
