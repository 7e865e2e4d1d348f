package tcdriver

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// NetlinkConntrack cuts connections through ctnetlink, in the conntrack
// zone of the rule set's network (Zones.Of, the driver's Options.Zones). The kernel has no way to select
// entries by rule, so it dumps the table and deletes the entries Denied
// matches: one dump per changed rule set.
type NetlinkConntrack struct {
	// Zones is the driver's zone range (zero value: DefaultZoneRange).
	Zones ZoneRange
}

var _ ConnCutter = NetlinkConntrack{}

// Cut implements ConnCutter.
func (n NetlinkConntrack) Cut(_ context.Context, podIPs []netip.Addr, rs *policy.RuleSet) (int, error) {
	if len(podIPs) == 0 {
		return 0, nil
	}
	zone := Options{Zones: n.Zones}.withDefaults().Zones.Of(rs.Attachment.Network)
	total := 0
	for _, fam := range []netlink.InetFamily{nl.FAMILY_V4, nl.FAMILY_V6} {
		k, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, flowFilter{zone: zone, podIPs: podIPs, rs: rs})
		total += int(k)
		if err != nil {
			return total, fmt.Errorf("conntrack zone %d: deleting the connections %s now denies: %w", zone, rs.Attachment, err)
		}
	}
	return total, nil
}

type flowFilter struct {
	zone   uint16
	podIPs []netip.Addr
	rs     *policy.RuleSet
}

func (f flowFilter) MatchConntrackFlow(c *netlink.ConntrackFlow) bool {
	src, ok1 := netip.AddrFromSlice(c.Forward.SrcIP)
	dst, ok2 := netip.AddrFromSlice(c.Forward.DstIP)
	if !ok1 || !ok2 {
		return false
	}
	return Flow{Zone: c.Zone, Proto: c.Forward.Protocol, Src: src, Dst: dst, SrcPort: c.Forward.SrcPort, DstPort: c.Forward.DstPort}.Denied(f.zone, f.podIPs, f.rs)
}
