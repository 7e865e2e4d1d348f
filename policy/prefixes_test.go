package policy

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

func TestPrefixSetNormalizes(t *testing.T) {
	cases := []struct {
		name   string
		add    []string
		except []string
		want   []string
	}{
		{"single", []string{"10.0.0.0/24"}, nil, []string{"10.0.0.0/24"}},
		{"adjacent halves aggregate", []string{"10.0.0.0/25", "10.0.0.128/25"}, nil, []string{"10.0.0.0/24"}},
		{"overlap collapses", []string{"10.0.0.0/16", "10.0.3.0/24"}, nil, []string{"10.0.0.0/16"}},
		{"host bits are masked", []string{"10.0.0.7/24"}, nil, []string{"10.0.0.0/24"}},
		{"except one host", []string{"10.0.0.0/30"}, []string{"10.0.0.1/32"}, []string{"10.0.0.0/32", "10.0.0.2/31"}},
		{"except everything", []string{"10.0.0.0/24"}, []string{"10.0.0.0/23"}, nil},
		{"families never merge", []string{"255.255.255.255/32", "::/128"}, nil, []string{"255.255.255.255/32", "::/128"}},
		{"IPv6 except", []string{"fd00::/126"}, []string{"fd00::2/127"}, []string{"fd00::/127"}},
		{"whole spaces", []string{"0.0.0.0/0", "::/0"}, []string{"0.0.0.0/1"}, []string{"128.0.0.0/1", "::/0"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var s, ex prefixSet
			for _, p := range c.add {
				s.addPrefix(netip.MustParsePrefix(p))
			}
			for _, p := range c.except {
				ex.addPrefix(netip.MustParsePrefix(p))
			}
			s.normalize()
			ex.normalize()
			s.subtract(&ex)
			s.normalize()
			var got []string
			for _, p := range s.prefixes() {
				got = append(got, p.String())
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
}

// TestPrefixSetMatchesMembership checks set arithmetic against a brute force
// membership test over a small address space.
func TestPrefixSetMatchesMembership(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}) }
	for iter := range 500 {
		var s, ex prefixSet
		var adds, excepts []netip.Prefix
		for range 1 + rng.IntN(4) {
			p := netip.PrefixFrom(addr(rng.IntN(512)), 23+rng.IntN(10)).Masked()
			adds = append(adds, p)
			s.addPrefix(p)
		}
		for range rng.IntN(4) {
			p := netip.PrefixFrom(addr(rng.IntN(512)), 24+rng.IntN(9)).Masked()
			excepts = append(excepts, p)
			ex.addPrefix(p)
		}
		s.normalize()
		ex.normalize()
		s.subtract(&ex)
		s.normalize()
		prefixes := s.prefixes()
		for i := range 1024 {
			a := addr(i)
			want := slices.ContainsFunc(adds, func(p netip.Prefix) bool { return p.Contains(a) }) &&
				!slices.ContainsFunc(excepts, func(p netip.Prefix) bool { return p.Contains(a) })
			got := slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(a) })
			if got != want || s.contains(a) != want {
				t.Fatalf("iter %d: %s: prefixes %v contain=%v, set contains=%v, want %v (adds %v excepts %v)",
					iter, a, prefixes, got, s.contains(a), want, adds, excepts)
			}
		}
		for i := 1; i < len(prefixes); i++ {
			if prefixes[i-1].Overlaps(prefixes[i]) {
				t.Fatalf("prefixes overlap: %v", prefixes)
			}
		}
	}
}
