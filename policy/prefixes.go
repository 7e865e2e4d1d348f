package policy

import (
	"net/netip"
	"slices"
)

// Peer address sets are kept as sorted, disjoint, non-adjacent address
// ranges and turned into the fewest covering prefixes at the end. Ranges make
// union and except (set difference) exact and cheap; prefixes are what flower
// matches.

type addrRange struct{ first, last netip.Addr }

func prefixRange(p netip.Prefix) addrRange {
	p = p.Masked()
	return addrRange{first: p.Addr(), last: lastAddr(p)}
}

// lastAddr returns the highest address of prefix p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr()
	if a.Is4() {
		b := a.As4()
		setHostBits(b[:], p.Bits())
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	setHostBits(b[:], p.Bits())
	return netip.AddrFrom16(b)
}

func setHostBits(b []byte, bits int) {
	for i := range b {
		switch {
		case bits >= 8*(i+1):
		case bits <= 8*i:
			b[i] = 0xff
		default:
			b[i] |= 0xff >> (bits - 8*i)
		}
	}
}

// prefixSet is a set of addresses of both families.
type prefixSet struct {
	ranges []addrRange
	// pfx memoizes prefixes() for sets that no longer change.
	pfx []netip.Prefix
}

// cachedPrefixes is prefixes() computed once; only for normalized sets that
// are not modified afterwards.
func (s *prefixSet) cachedPrefixes() []netip.Prefix {
	if s.pfx == nil {
		s.pfx = s.prefixes()
	}
	return s.pfx
}

func (s *prefixSet) addPrefix(p netip.Prefix) { s.ranges = append(s.ranges, prefixRange(p)) }

func (s *prefixSet) addAddr(a netip.Addr) {
	a = a.Unmap()
	s.ranges = append(s.ranges, addrRange{first: a, last: a})
}

func (s *prefixSet) addSet(o *prefixSet) { s.ranges = append(s.ranges, o.ranges...) }

func (s *prefixSet) empty() bool { return len(s.ranges) == 0 }

// normalize sorts and merges overlapping or adjacent ranges.
func (s *prefixSet) normalize() {
	if len(s.ranges) < 2 {
		return
	}
	slices.SortFunc(s.ranges, func(a, b addrRange) int { return a.first.Compare(b.first) })
	s.coalesce()
}

// coalesce merges overlapping or adjacent ranges of a sorted set.
func (s *prefixSet) coalesce() {
	if len(s.ranges) < 2 {
		return
	}
	out := s.ranges[:1]
	for _, r := range s.ranges[1:] {
		cur := &out[len(out)-1]
		next := cur.last.Next()
		if r.first.Is4() == cur.last.Is4() && (r.first.Compare(cur.last) <= 0 || (next.IsValid() && r.first == next)) {
			if r.last.Compare(cur.last) > 0 {
				cur.last = r.last
			}
			continue
		}
		out = append(out, r)
	}
	s.ranges = out
}

// subtract removes every address of o from s. Both must be normalized.
func (s *prefixSet) subtract(o *prefixSet) {
	var out []addrRange
	for _, r := range s.ranges {
		pieces := []addrRange{r}
		for _, x := range o.ranges {
			var next []addrRange
			for _, p := range pieces {
				next = append(next, cut(p, x)...)
			}
			pieces = next
		}
		out = append(out, pieces...)
	}
	s.ranges = out
}

// cut returns r without the addresses of x (zero, one or two ranges).
func cut(r, x addrRange) []addrRange {
	if r.first.Is4() != x.first.Is4() || x.last.Compare(r.first) < 0 || x.first.Compare(r.last) > 0 {
		return []addrRange{r}
	}
	var out []addrRange
	if x.first.Compare(r.first) > 0 {
		out = append(out, addrRange{first: r.first, last: x.first.Prev()})
	}
	if x.last.Compare(r.last) < 0 {
		out = append(out, addrRange{first: x.last.Next(), last: r.last})
	}
	return out
}

// prefixes returns the fewest prefixes covering exactly the set, IPv4 first,
// each family in address order. The set must be normalized.
func (s *prefixSet) prefixes() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(s.ranges))
	for _, r := range s.ranges {
		out = appendRangePrefixes(out, r)
	}
	return out
}

// appendRangePrefixes splits [first, last] into maximal aligned prefixes.
func appendRangePrefixes(out []netip.Prefix, r addrRange) []netip.Prefix {
	if r.first == r.last { // the common case: one pod address
		return append(out, netip.PrefixFrom(r.first, r.first.BitLen()))
	}
	start := r.first
	for {
		bits := start.BitLen()
		// Widen while the prefix stays aligned on start and inside the range.
		for bits > 0 {
			p := netip.PrefixFrom(start, bits-1).Masked()
			if p.Addr() != start || lastAddr(p).Compare(r.last) > 0 {
				break
			}
			bits--
		}
		p := netip.PrefixFrom(start, bits)
		out = append(out, p)
		end := lastAddr(p)
		if end.Compare(r.last) >= 0 {
			return out
		}
		start = end.Next()
	}
}

// contains reports whether a is in the (normalized) set.
func (s *prefixSet) contains(a netip.Addr) bool {
	a = a.Unmap()
	i, _ := slices.BinarySearchFunc(s.ranges, a, func(r addrRange, a netip.Addr) int {
		if r.last.Compare(a) < 0 {
			return -1
		}
		if r.first.Compare(a) > 0 {
			return 1
		}
		return 0
	})
	return i < len(s.ranges) && s.ranges[i].first.Compare(a) <= 0 && s.ranges[i].last.Compare(a) >= 0
}
