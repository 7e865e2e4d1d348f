package tcdriver

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// ZoneRange is the range of conntrack zones the driver uses: one zone per
// network, so that two networks with overlapping addresses never share
// connection state (a connection on one would be "+est" on the other).
type ZoneRange struct {
	First, Count uint16
}

// DefaultZoneRange is [DefaultZone (0x4D50), 65535]: out of zone 0 (host netfilter) and
// of the low zones OVS and others allocate from, and as wide as the rest of
// the 16-bit zone space, because two networks of one node that hash to the
// same zone are refused (fail closed): with 45,743 zones for real networks
// the chance that any two of N networks collide is about N²/91,486 (0.1 %
// for 10 networks, 1.7 % for 40), where 1,023 zones gave 4.3 % for 10.
var DefaultZoneRange = ZoneRange{First: DefaultZone, Count: 65535 - DefaultZone + 1}

func (z ZoneRange) String() string {
	return fmt.Sprintf("%d-%d", z.First, uint32(z.First)+uint32(z.Count)-1)
}

// ParseZoneRange parses --ct-zone-range "FIRST-LAST" (inclusive) or "ZONE".
func ParseZoneRange(s string) (ZoneRange, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		hi = lo
	}
	first, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	last, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil || first == 0 || last < first || last-first+1 > 0xFFFF {
		return ZoneRange{}, fmt.Errorf("--ct-zone-range=%q: want FIRST-LAST with 1 <= FIRST <= LAST <= 65535", s)
	}
	return ZoneRange{First: uint16(first), Count: uint16(last - first + 1)}, nil
}

// Of is the zone of a network: a hash of its namespace/name into the range
// after its first zone. It depends on nothing else, so it is the same after
// a restart (pipelines are adopted unchanged) and in `render -o tc`. Two
// networks with the same zone are refused by Apply (see zoneConflict).
//
// The first zone is reserved for the agent's pseudo-networks (a name that
// is no valid NAD name: "(free)", "(unmapped)", "(not policed)"; or none):
// their pipelines allow no connection but ICMP per the flags, share that
// zone with each other and with no real network.
func (z ZoneRange) Of(n policy.NetworkRef) uint16 {
	if z.Count <= 1 || pseudoNetwork(n) {
		return z.First
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(n.Namespace + "/" + n.Name))
	return z.First + 1 + uint16(h.Sum32()%uint32(z.Count-1))
}

func pseudoNetwork(n policy.NetworkRef) bool {
	return n.Name == "" || strings.HasPrefix(n.Name, "(")
}

// zoneConflict returns the network among applied (what other
// representors enforce) that uses the zone of rs's network, if any. Rule
// sets that isolate nothing install no filter and use no zone.
func zoneConflict(z ZoneRange, rs *policy.RuleSet, applied map[string]*policy.RuleSet, dev string) (policy.NetworkRef, bool) {
	if !usesConntrack(rs) || pseudoNetwork(rs.Attachment.Network) || z.Count <= 1 {
		return policy.NetworkRef{}, false
	}
	zone := z.Of(rs.Attachment.Network)
	for d, o := range applied {
		if d != dev && usesConntrack(o) && o.Attachment.Network != rs.Attachment.Network && z.Of(o.Attachment.Network) == zone {
			return o.Attachment.Network, true
		}
	}
	return policy.NetworkRef{}, false
}

func usesConntrack(rs *policy.RuleSet) bool {
	return rs != nil && (rs.Ingress.Isolated || rs.Egress.Isolated)
}
