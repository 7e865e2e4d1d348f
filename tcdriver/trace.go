package tcdriver

import (
	"fmt"
	"net/netip"
	"strings"
)

// Packet is a frame as a representor hook sees it, for the tracer.
type Packet struct {
	// VLANs are the TPIDs of the frame's VLAN tags, outermost first
	// (nil: untagged; {Eth8021Q}: one 802.1Q tag; {Eth8021AD, Eth8021Q}: QinQ).
	VLANs []uint16
	// DstMAC is the destination address (the bridge placement dispatches
	// on it).
	DstMAC MAC
	// EthType is the ethertype after the VLAN tags.
	EthType  uint16
	Src, Dst netip.Addr
	IPProto  uint8
	SrcPort  uint16
	DstPort  uint16
	ICMPType uint8
}

// tcProtocol is the protocol tcf_proto filters are selected by: the
// outermost VLAN TPID of a tagged frame, the ethertype otherwise.
func (p *Packet) tcProtocol() uint16 {
	if len(p.VLANs) > 0 {
		return p.VLANs[0]
	}
	return p.EthType
}

func (p *Packet) String() string {
	var b strings.Builder
	for _, v := range p.VLANs {
		fmt.Fprintf(&b, "[%s] ", ethName(v))
	}
	b.WriteString(ethName(p.EthType))
	if p.Src.IsValid() {
		fmt.Fprintf(&b, " %s:%d > %s:%d %s", p.Src, p.SrcPort, p.Dst, p.DstPort, ipProtoName(p.IPProto))
	}
	if p.IPProto == ProtoICMP || p.IPProto == ProtoICMPv6 {
		fmt.Fprintf(&b, " type %d", p.ICMPType)
	}
	return b.String()
}

// Verdict is what the hook does with a packet.
type Verdict int

const (
	Pass Verdict = iota
	Drop
)

func (v Verdict) String() string {
	if v == Drop {
		return "drop"
	}
	return "pass"
}

// TraceResult is the outcome of tracing one packet through one hook.
type TraceResult struct {
	Verdict Verdict
	// Path lists the filters that matched, in order.
	Path []string
	// Hits are the filters that matched, in order (Path without the
	// no-match and ct steps).
	Hits []*Filter
	// CtState is the conntrack state the packet carried at the end.
	CtState uint16
}

func (r TraceResult) String() string {
	return r.Verdict.String() + " via " + strings.Join(r.Path, " → ")
}

// Conntrack is the tracer's model of netfilter conntrack as act_ct uses it.
type Conntrack struct {
	entries map[ctKey]*ctEntry
}

type ctKey struct {
	zone     uint16
	src, dst netip.Addr
	proto    uint8
	sp, dp   uint16
}

type ctEntry struct {
	seenReply bool
}

// NewConntrack returns an empty conntrack table.
func NewConntrack() *Conntrack { return &Conntrack{entries: map[ctKey]*ctEntry{}} }

func (p *Packet) ctKeys(zone uint16) (orig, reply ctKey) {
	orig = ctKey{zone, p.Src, p.Dst, p.IPProto, p.SrcPort, p.DstPort}
	reply = ctKey{zone, p.Dst, p.Src, p.IPProto, p.DstPort, p.SrcPort}
	if p.IPProto == ProtoICMP || p.IPProto == ProtoICMPv6 {
		// Echo request/reply share a tuple (the id, modelled by the ports).
		orig.sp, orig.dp, reply.sp, reply.dp = 0, 0, 0, 0
	}
	return orig, reply
}

// lookup returns the ct_state flags a ct action in zone gives the packet.
func (c *Conntrack) lookup(zone uint16, p *Packet) uint16 {
	if p.EthType != EthIPv4 && p.EthType != EthIPv6 {
		return 0 // act_ct leaves non-IP packets untracked
	}
	orig, reply := p.ctKeys(zone)
	if e := c.entries[orig]; e != nil {
		if e.seenReply {
			return CtTracked | CtEstablished
		}
		return CtTracked | CtNew
	}
	if e := c.entries[reply]; e != nil {
		e.seenReply = true
		return CtTracked | CtEstablished | CtReply
	}
	return CtTracked | CtNew
}

// ctTable is what a ct action consults: the software conntrack, or the
// eswitch model's hardware CT table (eswitch.go), which can miss.
type ctTable interface {
	// act runs ct action a on an IP packet: the ct_state it gives the
	// packet, or false when the table has no entry for it (a hardware CT
	// miss: the frame leaves the hardware pipeline there).
	act(a Action, p *Packet) (uint16, bool)
}

func (c *Conntrack) act(a Action, p *Packet) (uint16, bool) {
	st := c.lookup(a.Zone, p)
	if a.Commit && st&CtTracked != 0 && st&CtInvalid == 0 {
		c.commit(a.Zone, p)
	}
	return st, true
}

func (c *Conntrack) commit(zone uint16, p *Packet) {
	if p.EthType != EthIPv4 && p.EthType != EthIPv6 {
		return
	}
	orig, reply := p.ctKeys(zone)
	if c.entries[orig] == nil && c.entries[reply] == nil {
		c.entries[orig] = &ctEntry{}
	}
}

// Trace runs a packet through the filters of one hook the way the kernel
// does: chain 0 first, tcf_protos by priority, flower keys, actions in
// order, goto restarting classification in the target chain, a chain
// without a match letting the packet pass. ct is updated by ct actions.
func Trace(filters []*Filter, h Hook, p Packet, ct *Conntrack) TraceResult {
	res, _ := trace(filters, h, p, ct, false)
	return res
}

// HardwareResult is the outcome of tracing a packet through the filters a
// profile offloads (TraceOffloaded).
type HardwareResult struct {
	TraceResult
	// Decided is false when the packet misses to software: a chain other
	// than 0 in which no offloaded filter matches (mlx5 then continues in
	// software at that chain), or a hook the target does not offload. The
	// Verdict is then meaningless.
	Decided bool
	// MissChain is the chain that missed.
	MissChain uint32
}

// TraceOffloaded runs a packet the way the profile's hardware would: only
// the filters prof offloads exist, and a chain (other than chain 0) without
// a matching filter misses to software instead of passing. Conntrack is the
// software one: this evaluates the offloaded filters, not mlx5's CT table
// (which holds only established TCP and confirmed UDP connections, so
// today every new connection misses to software at its ct action).
func TraceOffloaded(prof Profile, filters []*Filter, h Hook, p Packet, ct *Conntrack) HardwareResult {
	if h == HookEgress && prof.withDefault().Hardware {
		// Nothing on a representor's egress hook is offloaded: a frame
		// that reaches it is in software (and one switched in hardware
		// never reaches it: issue 11's placement change).
		return HardwareResult{TraceResult: TraceResult{Path: []string{"egress hook: software only"}}}
	}
	res, miss := trace(prof.Offloaded(filters), h, p, ct, true)
	if miss != nil {
		return HardwareResult{TraceResult: res, MissChain: miss.chain}
	}
	return HardwareResult{TraceResult: res, Decided: true}
}

// traceMiss is where a hardware trace left the hardware pipeline.
type traceMiss struct {
	chain uint32
	// ct: a ct action found no entry (only a hardware CT table misses);
	// otherwise the chain had no matching filter.
	ct bool
}

// trace is Trace; with missToSoftware, a chain other than 0 without a
// matching filter stops the trace and is returned, as is a ct action whose
// table misses.
func trace(filters []*Filter, h Hook, p Packet, ct ctTable, missToSoftware bool) (TraceResult, *traceMiss) {
	byChain := map[uint32][]*Filter{}
	for _, f := range filters {
		if f.Hook == h {
			byChain[f.Chain] = append(byChain[f.Chain], f)
		}
	}
	for _, fs := range byChain {
		sortFilters(fs)
	}
	var res TraceResult
	chain := uint32(0)
	for hops := 0; hops < 1024; hops++ {
		var hit *Filter
		for _, f := range byChain[chain] {
			if f.Foreign {
				continue // cannot be evaluated; the tests never need it
			}
			if f.matches(&p, res.CtState) {
				hit = f
				break
			}
		}
		if hit == nil {
			res.Path = append(res.Path, fmt.Sprintf("chain %d: no match", chain))
			res.Verdict = Pass
			if missToSoftware && chain != 0 {
				return res, &traceMiss{chain: chain}
			}
			return res, nil
		}
		res.Path = append(res.Path, fmt.Sprintf("chain %d pref %d", hit.Chain, hit.Prio))
		res.Hits = append(res.Hits, hit)
		next, done := false, false
		for _, a := range hit.Actions {
			switch a.Kind {
			case ActCt:
				if p.EthType != EthIPv4 && p.EthType != EthIPv6 {
					// act_ct drops what it cannot track.
					res.Path = append(res.Path, "ct: not IP")
					res.Verdict = Drop
					return res, nil
				}
				st, ok := ct.act(a, &p)
				if !ok {
					res.Path = append(res.Path, fmt.Sprintf("ct zone %d: miss", a.Zone))
					return res, &traceMiss{chain: chain, ct: true}
				}
				res.CtState = st
				continue
			case ActAccept:
				res.Verdict, done = Pass, true
			case ActDrop:
				res.Verdict, done = Drop, true
			case ActGoto:
				chain, next = a.Chain, true
			}
			break
		}
		if done {
			return res, nil
		}
		if !next {
			res.Verdict = Pass // pipe at the end of the action list
			return res, nil
		}
	}
	res.Path = append(res.Path, "loop limit")
	res.Verdict = Drop
	return res, nil
}

// matches evaluates the flower keys of f against p.
func (f *Filter) matches(p *Packet, ctState uint16) bool {
	if f.Protocol != EthAll && f.Protocol != p.tcProtocol() {
		return false
	}
	m := &f.Match
	nproto := p.EthType
	if f.Protocol == Eth8021Q || f.Protocol == Eth8021AD {
		// flower keys the ethertype following the first tag.
		if len(p.VLANs) == 0 {
			return false
		}
		following := p.EthType
		if len(p.VLANs) > 1 {
			following = p.VLANs[1]
		}
		if m.VLANEthType != 0 && m.VLANEthType != following {
			return false
		}
	} else if f.Protocol != EthAll && f.Protocol != nproto {
		return false
	}
	for i, mb := range m.DstMACMask {
		if p.DstMAC[i]&mb != m.DstMAC[i] {
			return false
		}
	}
	isIP := nproto == EthIPv4 || nproto == EthIPv6
	if m.IPProto != 0 && (!isIP || m.IPProto != p.IPProto) {
		return false
	}
	if m.Src.IsValid() && (!isIP || !m.Src.Contains(p.Src)) {
		return false
	}
	if m.Dst.IsValid() && (!isIP || !m.Dst.Contains(p.Dst)) {
		return false
	}
	if m.DstPortMask != 0 {
		if p.DstPort&m.DstPortMask != m.DstPortMin {
			return false
		}
	} else if m.DstPortMin != 0 && (p.DstPort < m.DstPortMin || p.DstPort > m.DstPortMax) {
		return false
	}
	if m.HasICMPType && p.ICMPType != m.ICMPType {
		return false
	}
	if m.CtStateMask != 0 && ctState&m.CtStateMask != m.CtState {
		return false
	}
	return true
}
