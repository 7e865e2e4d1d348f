package tcdriver

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

func TestParseZoneRange(t *testing.T) {
	for _, c := range []struct {
		in   string
		want ZoneRange
		ok   bool
	}{
		{"19792-65535", DefaultZoneRange, true}, {"100", ZoneRange{100, 1}, true}, {"1-65535", ZoneRange{1, 65535}, true},
		{"0-10", ZoneRange{}, false}, {"10-9", ZoneRange{}, false}, {"x", ZoneRange{}, false}, {"1-70000", ZoneRange{}, false},
	} {
		got, err := ParseZoneRange(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseZoneRange(%q) = %v, %v; want %v ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
	if s := DefaultZoneRange.String(); s != "19792-65535" {
		t.Errorf("DefaultZoneRange = %s", s)
	}
}

// TestZonePerNetwork: every ct action of a pipeline uses its network's
// zone, inside the range; two networks on one zone are refused (fail
// closed: the representor keeps its rules), the same network on many
// representors is not.
func TestZonePerNetwork(t *testing.T) {
	rs := func(dev string, n policy.NetworkRef) *policy.RuleSet {
		return &policy.RuleSet{Attachment: policy.Attachment{PodNamespace: "ns", PodName: dev, Network: n}, Ingress: policy.DirectionRules{Isolated: true, Stateful: true}}
	}
	zones := ZoneRange{First: 5000, Count: 4}
	fake := NewFake(Options{Zones: zones}, "r0", "r1", "r2", "r3")
	x := policy.NetworkRef{Namespace: "a", Name: "x"}
	if err := fake.Apply(context.Background(), "r0", rs("r0", x)); err != nil {
		t.Fatal(err)
	}
	if err := fake.Apply(context.Background(), "r1", rs("r1", x)); err != nil {
		t.Fatalf("same network on a second representor: %v", err)
	}
	for _, f := range fake.Filters("r0", HookEgress) {
		for _, a := range f.Actions {
			if a.Kind == ActCt && a.Zone != zones.Of(x) {
				t.Errorf("%s: zone %d, want %d", f, a.Zone, zones.Of(x))
			}
		}
	}
	// Find a network that shares x's zone and one that does not.
	var clash, other policy.NetworkRef
	for i := 0; clash.Name == "" || other.Name == ""; i++ {
		n := policy.NetworkRef{Namespace: "b", Name: fmt.Sprint(i)}
		if z := zones.Of(n); z < zones.First || z >= zones.First+zones.Count {
			t.Fatalf("zone %d of %s out of %s", z, n, zones)
		} else if z == zones.Of(x) && clash.Name == "" {
			clash = n
		} else if z != zones.Of(x) && other.Name == "" {
			other = n
		}
	}
	if err := fake.Apply(context.Background(), "r2", rs("r2", other)); err != nil {
		t.Fatalf("network on another zone: %v", err)
	}
	err := fake.Apply(context.Background(), "r3", rs("r3", clash))
	if err == nil || !strings.Contains(err.Error(), "same conntrack zone") {
		t.Fatalf("network sharing a zone with %s: err %v, want a refusal", x, err)
	}
	if n := len(fake.Filters("r3", HookEgress)); n != 0 {
		t.Errorf("refused rule set installed %d filters", n)
	}
	// Once x is gone from every representor, its zone is free.
	for _, d := range []string{"r0", "r1"} {
		if err := fake.Remove(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
	if err := fake.Apply(context.Background(), "r3", rs("r3", clash)); err != nil {
		t.Errorf("after x left, %s: %v", clash, err)
	}
}
