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
	for _, f := range st.Filters {
		if f.Hook != h || !f.ours() || f.Chain < base || f.Chain-base >= slotSize || len(f.Actions) == 0 {
			continue
		}
		rel := f.Chain - base
		switch last := f.Actions[len(f.Actions)-1].Kind; {
		case last == ActDrop:
			c.Dropped += f.Packets
		case last != ActAccept, rel == chainND: // ND passes are no connection
		case rel == chainNew:
			c.ICMP += f.Packets
		case rel >= chainRules:
			if i := int((rel - chainRules) / 3); i < len(c.Rules) {
				c.Rules[i] += f.Packets
			}
		}
	}
	return c, true
}
