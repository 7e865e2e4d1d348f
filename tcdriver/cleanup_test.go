package tcdriver

import (
	"context"
	"slices"
	"strings"
	"testing"
)

func TestCleanupRemovesOursAndKeepsForeign(t *testing.T) {
	ctx := context.Background()
	foreign := &Filter{Hook: HookIngress, Chain: 0, Prio: 10, Protocol: EthIPv4, Handle: 1, Match: Match{IPProto: ProtoUDP}, Actions: []Action{{Kind: ActAccept}}}
	setup := func(t *testing.T) *Fake {
		fake := NewFake(Options{}, "rep0", "rep1", "rep2", "eth0")
		// rep0: ours and a foreign filter; rep1: ours only; rep2: foreign
		// only; eth0: no clsact at all.
		for _, dev := range []string{"rep0", "rep1"} {
			if err := fake.Apply(ctx, dev, goldenRuleSets["ipv6"]); err != nil {
				t.Fatal(err)
			}
		}
		for _, dev := range []string{"rep0", "rep2"} {
			if err := fake.AddForeign(dev, foreign); err != nil {
				t.Fatal(err)
			}
		}
		return fake
	}
	devs := []string{"eth0", "rep0", "rep1", "rep2", "gone"}

	fake := setup(t)
	ours0, _ := fake.Dump(ctx, "rep0")
	n := len(ours0.Ours())
	if n == 0 {
		t.Fatal("setup installed nothing")
	}
	before := dumps(t, fake, devs)
	dry, err := Cleanup(ctx, fake, devs, true)
	if err != nil {
		t.Fatal(err)
	}
	want := []CleanupResult{{"rep0", n, 1}, {"rep1", n, 0}, {"rep2", 0, 1}}
	if !slices.Equal(dry, want) {
		t.Errorf("dry run: %+v, want %+v", dry, want)
	}
	if after := dumps(t, fake, devs); after != before {
		t.Errorf("dry run changed the kernel:\n%s\n---\n%s", before, after)
	}

	got, err := Cleanup(ctx, fake, devs, false)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("cleanup: %+v, want %+v", got, want)
	}
	for _, dev := range []string{"rep0", "rep1", "rep2"} {
		st, _ := fake.Dump(ctx, dev)
		wantForeign := map[string]int{"rep0": 1, "rep2": 1}[dev]
		if len(st.Ours()) != 0 || len(st.Filters) != wantForeign || !st.Clsact {
			t.Errorf("%s after cleanup (want clsact and %d foreign filters):\n%s", dev, wantForeign, st.Canonical())
		}
	}
	again, err := Cleanup(ctx, fake, devs, false)
	if err != nil || !slices.Equal(again, []CleanupResult{{"rep0", 0, 1}, {"rep1", 0, 0}, {"rep2", 0, 1}}) {
		t.Errorf("second cleanup: %+v, %v", again, err)
	}
}

func TestCleanupReportsKernelErrorsAndGoesOn(t *testing.T) {
	ctx := context.Background()
	fake := NewFake(Options{}, "rep0", "rep1")
	for _, dev := range []string{"rep0", "rep1"} {
		if err := fake.Apply(ctx, dev, goldenRuleSets["ipv6"]); err != nil {
			t.Fatal(err)
		}
	}
	fake.FailAfter(0)
	got, err := Cleanup(ctx, fake, []string{"rep0", "rep1"}, false)
	if err == nil || !strings.Contains(err.Error(), "cleanup rep0") {
		t.Fatalf("error %v, want one naming rep0", err)
	}
	if len(got) != 1 || got[0].Dev != "rep1" {
		t.Errorf("results %+v, want rep1 cleaned despite rep0's failure", got)
	}
	st, _ := fake.Dump(ctx, "rep1")
	if len(st.Ours()) != 0 {
		t.Errorf("rep1 still has filters of ours")
	}
}

func dumps(t *testing.T, d Driver, devs []string) string {
	t.Helper()
	var b strings.Builder
	for _, dev := range devs {
		if st, err := d.Dump(context.Background(), dev); err == nil {
			b.WriteString(st.Canonical())
		}
	}
	return b.String()
}
