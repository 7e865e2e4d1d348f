package tcdriver

import "github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"

// Counters are one hook's packet counters, read from our filters' own
// (offloaded filters included) counters in the generation the entry filter
// points at.
type Counters struct {
	// Rules[i] counts the first packets of new connections that rule i of
	// the direction allowed (a rule's accepting filters: peers without
	// ports, or its port filters).
	Rules []uint64
	// ICMP counts new ICMP/ICMPv6 connections allowed by --accept-icmp(v6).
	ICMP uint64
	// Dropped counts every packet our filters dropped: denied new
	// connections, invalid conntrack state, unclassifiable frames.
	Dropped uint64
}

// Allowed is the number of new connections' first packets the rules and
// the ICMP flags allowed.
func (c Counters) Allowed() uint64 {
	n := c.ICMP
	for _, r := range c.Rules {
		n += r
	}
	return n
}

// CountersOf attributes the counters of the filters of st on hook h to the
// rules of dr, the direction those filters enforce. ok is false when no
// pipeline of ours is active on the hook.
func CountersOf(st *State, h Hook, dr *policy.DirectionRules, opts Options) (c Counters, ok bool) {
	opts = opts.withDefaults()
	var base uint32
	for _, f := range st.Filters {
		if f.Hook == h && f.Chain == 0 && f.ours() && f.Prio == opts.EntryPrio && len(f.Actions) == 1 && f.Actions[0].Kind == ActGoto {
			base, ok = f.Actions[0].Chain, true
		}
	}
	if !ok || !opts.owns(base) {
		return Counters{}, false
	}
	c.Rules = make([]uint64, len(dr.Rules))
	c.add(st.Filters, h, base, slotSize, func(a Action) bool { return a.Kind == ActAccept })
	return c, true
}

// add attributes the counters of our filters on hook h in the chains
// [first, first+size) (one representor generation, or one bridge section)
// to c; accepts says which last action allows a new connection.
func (c *Counters) add(fs []*Filter, h Hook, first, size uint32, accepts func(Action) bool) {
	for _, f := range fs {
		if f.Hook != h || !f.ours() || f.Chain < first || f.Chain-first >= size || len(f.Actions) == 0 {
			continue
		}
		rel := f.Chain - first
		switch last := f.Actions[len(f.Actions)-1]; {
		case last.Kind == ActDrop:
			c.Dropped += f.Packets
		case !accepts(last), rel == size-1: // ND passes are no connection
		case rel == chainNew:
			c.ICMP += f.Packets
		case rel >= chainRules:
			if i := int((rel - chainRules) / 3); i < len(c.Rules) {
				c.Rules[i] += f.Packets
			}
		}
	}
}

// BridgeCounters attributes the counters of the bridge placement to the
// direction d of the attachment on port dev of b: its egress from its
// sender section on its own port, its ingress from its receiver sections
// on every other port (states holds each port's dump). ok is false when no
// section of it is installed.
func BridgeCounters(states map[string]*State, b *Bridge, dev string, d policy.Direction, opts Options) (c Counters, ok bool) {
	opts = opts.withDefaults()
	var self *BridgePort
	for i := range b.Ports {
		if b.Ports[i].Dev == dev {
			self = &b.Ports[i]
		}
	}
	if self == nil || self.RuleSet == nil {
		return Counters{}, false
	}
	dr := self.RuleSet.Direction(d)
	c.Rules = make([]uint64, len(dr.Rules))
	// entries finds, on one port, the section frames of the attachment
	// enter: the chain 0 entry's for its egress on its own port, the
	// dispatch entry of its MAC for its ingress elsewhere.
	section := func(st *State, egress bool) (first uint32, found bool) {
		mac, _ := MACOf(self.MAC)
		for _, f := range st.Filters {
			if !f.ours() || f.Hook != HookIngress || len(f.Actions) != 1 || f.Actions[0].Kind != ActGoto {
				continue
			}
			target := f.Actions[0].Chain
			entry := f.Chain == 0 && f.Prio == opts.EntryPrio
			switch {
			case egress && entry && f.Match.DstMACMask == (MAC{}):
			case !egress && f.Match.DstMACMask == exactMAC && f.Match.DstMAC == mac && (entry || opts.owns(f.Chain) && f.Prio == prioDispatchEntry):
			default:
				continue
			}
			if opts.owns(target) && isSection((target-opts.ChainBase)%slotSize) {
				return target, true
			}
		}
		return 0, false
	}
	for port, st := range states {
		if st == nil || (d == policy.Egress) != (port == dev) {
			continue
		}
		if first, found := section(st, d == policy.Egress); found {
			ok = true
			dispatch := opts.slotBase(opts.slotOf(first)) + chainDispatch
			c.add(st.Filters, HookIngress, first, sectionSize, func(a Action) bool {
				return a.Kind == ActAccept || a.Kind == ActGoto && a.Chain == dispatch
			})
		}
	}
	return c, ok
}
