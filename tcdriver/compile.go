package tcdriver

import (
	"fmt"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// Offload is the --tc-offload mode: which skip flags the filters carry and
// whether filters the placement expects in hardware must be there.
type Offload string

const (
	// OffloadRequired installs filters as OffloadAuto does and then
	// requires every filter the placement expects in hardware (the offload
	// profile's, see Options.expectedInHW) to be there: after every change
	// the driver reads in_hw_count back, and a port whose expected filters
	// are not all in hardware is refused and closed (NotInHardwareError).
	//
	// It does not install skip_sw, which is what the old spelling skip-sw
	// did, because skip_sw fails open on the hardware we target. Every
	// chain of ours is reached in software: mlx5 sends a packet its CT
	// table does not hold (every new connection) to software at the chain
	// of its ct action, a chain's hardware miss after a skip_hw filter
	// (keepMissInSoftware, the bridge placement's software-only dispatch
	// and receiver sections) continues in software at that chain, and a
	// packet the NIC cannot parse misses chain 0. In software a skip_sw
	// filter does not exist, so such a packet would fall off the end of
	// its chain, and clsact passes what no filter decides. No filter of
	// the pipeline is one software never needs, so none is skip_sw: the
	// software copy is the slow path's enforcement, the read back is the
	// proof of the fast path.
	OffloadRequired Offload = "required"
	// OffloadAuto installs filters without skip flags (beyond the skip_hw
	// the profile puts on what the target cannot match): the kernel
	// offloads what the driver of the port accepts and runs everything in
	// software as well. What is not in hardware as expected is reported
	// (metric, log), and the rules are enforced anyway, in software.
	OffloadAuto Offload = "auto"
	// OffloadSoftware keeps every filter in software (skip_hw): nothing
	// is expected in hardware.
	OffloadSoftware Offload = "software"
)

// ParseOffload parses the --tc-offload flag value. The spellings of
// earlier releases are accepted: skip-sw is required (without skip_sw on
// the filters, see OffloadRequired), skip-hw is software.
func ParseOffload(s string) (Offload, error) {
	switch s {
	case string(OffloadAuto), "":
		return OffloadAuto, nil
	case string(OffloadRequired), "skip-sw":
		return OffloadRequired, nil
	case string(OffloadSoftware), "skip-hw":
		return OffloadSoftware, nil
	}
	return "", fmt.Errorf("--tc-offload=%q: want required, auto or software (skip-sw and skip-hw are accepted for required and software)", s)
}

// flags are the skip flags every filter starts with (the profile adds
// skip_hw to what its target cannot match).
func (o Offload) flags() uint32 {
	if o == OffloadSoftware {
		return flagSkipHW
	}
	return 0
}

// hardwareCopiesPerFilter is how many devices hold a filter the placement
// puts in hardware: one, the port it is installed on, because every port
// carries its own copy of the sections it runs (docs/tc-rule-pipeline.md,
// "Shared block or per-port copies"). A shared block would expect one copy
// per port bound to it (mlx5 installs a rule per bound port); we use none.
func hardwareCopiesPerFilter() uint32 { return 1 }

// expectedInHW is how many hardware copies (in_hw_count) the placement
// expects of one of our filters, and why none when it expects none.
func (o Options) expectedInHW(f *Filter) (uint32, string) {
	if o.Offload == OffloadSoftware {
		return 0, reasonSoftwareMode
	}
	if ok, why := o.Profile.Offloads(f); !ok {
		return 0, why
	}
	return hardwareCopiesPerFilter(), ""
}

// Defaults of Options.
const (
	// DefaultZone is the first zone of DefaultZoneRange. One zone per
	// network for all its representors: a packet between two local pods
	// crosses the sender's ingress hook and the receiver's egress hook
	// with the same conntrack entry attached, so the receiver sees
	// "+trk+new" until a reply was seen and decides with its own policy
	// (see docs/tc-rule-pipeline.md, "Conntrack zones").
	DefaultZone uint16 = 0x4D50
	// DefaultEntryPrio is the priority of the entry filter in chain 0.
	DefaultEntryPrio uint16 = 0xC000
	// DefaultChainBase is the first chain of the range the driver owns.
	DefaultChainBase uint32 = 1000000
	// slotSize is the number of chains of one generation; the driver owns
	// two generations (2*slotSize chains from ChainBase).
	slotSize uint32 = 1000000
	// entryHandle is the handle of the (single) entry filter.
	entryHandle uint32 = 1
)

// Options configures compilation and the driver.
type Options struct {
	Offload Offload
	// Zones is the range of conntrack zones, one per network (zero value:
	// DefaultZoneRange).
	Zones ZoneRange
	// EntryPrio is the priority of the entry filter in chain 0 (0 means
	// DefaultEntryPrio). Foreign filters at a lower priority run first.
	EntryPrio uint16
	// ChainBase is the first chain the driver owns (0 means
	// DefaultChainBase); it owns [ChainBase, ChainBase+2000000).
	ChainBase uint32
	// NoVLAN drops every 802.1Q-tagged frame in isolated directions instead
	// of matching the inner ethertype (halves the filter count on ports
	// that never carry tagged traffic).
	NoVLAN bool
	// RoutedSources, in the bridge placement, judges frames a local pod
	// sends to another local pod by their source address whatever it is
	// (a pod that routes traffic for others), instead of only the
	// sender's own addresses (BridgePort.IPs); every port then carries
	// each receiver's whole ingress rules.
	RoutedSources bool
	// Profile is what the offload target matches in hardware (zero value:
	// ProfileSoftware). Hardware profiles compile port ranges into masked
	// ports, avoid the ct_state forms they refuse, and install what they
	// cannot match skip_hw with the chain's miss kept in software.
	Profile Profile
}

func (o Options) withDefaults() Options {
	if o.Offload == "" {
		o.Offload = OffloadAuto
	}
	if o.Zones.First == 0 {
		o.Zones = DefaultZoneRange
	}
	if o.EntryPrio == 0 {
		o.EntryPrio = DefaultEntryPrio
	}
	if o.ChainBase == 0 {
		o.ChainBase = DefaultChainBase
	}
	o.Profile = o.Profile.withDefault()
	return o
}

func (o Options) owns(chain uint32) bool {
	return chain >= o.ChainBase && chain-o.ChainBase < 2*slotSize
}

// slotOf returns the generation slot (0 or 1) of an owned chain.
func (o Options) slotOf(chain uint32) int { return int((chain - o.ChainBase) / slotSize) }

func (o Options) slotBase(slot int) uint32 { return o.ChainBase + uint32(slot)*slotSize }

// Chains of a generation, relative to its base.
const (
	chainClassify uint32 = 0
	chainState    uint32 = 1
	chainNew      uint32 = 2
	chainRules    uint32 = 3 // rule i: peers 3+3i, IPv4 ports 4+3i, IPv6 ports 5+3i
	// chainND holds the neighbour-discovery type matches for profiles
	// without ICMP type offload; it is the last chain of the slot, after
	// every rule chain, and entirely software (see compileSection).
	chainND uint32 = slotSize - 1
)

func rulePeerChain(i int) uint32 { return chainRules + 3*uint32(i) }
func rulePortChain(i int, v6 bool) uint32 {
	if v6 {
		return chainRules + 3*uint32(i) + 2
	}
	return chainRules + 3*uint32(i) + 1
}

// maxRules keeps a generation inside its slot.
const maxRules = int((slotSize - chainRules) / 3)

// Priorities inside chains. Filters at one priority never overlap in what
// they match (or share their action), so the order flower picks between
// them never matters; the catch-all of a chain always has the highest
// priority value (runs last).
const (
	prioARP         uint16 = 1
	prioARPTagged   uint16 = 2
	prioND          uint16 = 3
	prioNDTagged    uint16 = 4
	prioIPv4        uint16 = 5
	prioIPv6        uint16 = 6
	prioIPv4Tagged  uint16 = 7
	prioIPv6Tagged  uint16 = 8
	prioCatchAll    uint16 = 100
	prioEstablished uint16 = 1
	prioRelated     uint16 = 2
	prioNewConn     uint16 = 3
	// On hardware profiles new connections come before related packets:
	// the related filter is software-only, and everything after it in
	// the chain must be too.
	prioNewConnHW   uint16 = 2
	prioRelatedHW   uint16 = 3
	prioEcho        uint16 = 1
	prioEchoTagged  uint16 = 2
	prioEcho6       uint16 = 3
	prioEcho6Tagged uint16 = 4
	prioCommitAll   uint16 = 1
)

// chainRole says what a chain of a generation is for; Apply uses it to
// decide whether a change can be made in place.
type chainRole struct {
	kind roleKind
	rule int
	// section is the chain the rule's section starts at (bridge
	// placement; 0 for a representor's hooks).
	section uint32
}

type roleKind uint8

const (
	roleFixed roleKind = iota // classify, state, new and track-only chains
	rolePeers
	rolePorts
	// roleDispatch is a port's dispatch chain (bridge placement): its
	// receiver entries may change in place together with their sections.
	roleDispatch
)

// hookProgram is the compiled pipeline of one hook, with chain numbers
// relative to the generation base (entry filter excluded).
type hookProgram struct {
	filters []*Filter
	roles   map[uint32]chainRole
	// entries are the program's filters in chain 0 at the entry priority,
	// their goto relative to the generation base (nil: the single entry
	// filter to chain 0 of the generation). A bridge port's entry goes to
	// its sender section; the uplink has one per receiver (dst_mac), so
	// that a frame for none of them goes on to whatever else chain 0 holds.
	entries []*Filter
	// bridge marks a bridge port's program (bridge.go), whose sections
	// change in place as a whole.
	bridge bool
	// recompile, on a bridge port, compiles the same program with the
	// given sections (receivers by MAC, the sender as selfSection) under
	// new numbers.
	recompile func(fresh map[MAC]bool) *hookProgram
}

// Program is a compiled rule set: per hook, the filters of one generation,
// or nil when the hook needs no filter at all.
type Program struct {
	Hooks [2]*hookProgram
	opts  Options
}

// materialize returns the filters of hook h placed at generation base,
// handles numbered per (chain, prio) from 1.
func (p *hookProgram) materialize(base uint32) []*Filter {
	out := make([]*Filter, 0, len(p.filters))
	next := map[tpKey]uint32{}
	for _, f := range p.filters {
		c := cloneFilter(f)
		c.Chain += base
		for i := range c.Actions {
			if c.Actions[i].Kind == ActGoto {
				c.Actions[i].Chain += base
			}
		}
		next[c.tp()]++
		c.Handle = next[c.tp()]
		out = append(out, c)
	}
	return out
}

// entryFilters returns the program's chain 0 filters placed at
// generation base, handles numbered from 1.
func (p *hookProgram) entryFilters(h Hook, base uint32, o Options) []*Filter {
	if p.entries == nil {
		return []*Filter{o.entryFilter(h, base)}
	}
	out := make([]*Filter, 0, len(p.entries))
	for i, f := range p.entries {
		c := cloneFilter(f)
		c.Hook, c.Handle = h, uint32(i+1)
		for j := range c.Actions {
			if c.Actions[j].Kind == ActGoto {
				c.Actions[j].Chain += base
			}
		}
		out = append(out, c)
	}
	return out
}

func (o Options) entryFilter(h Hook, base uint32) *Filter {
	return &Filter{Hook: h, Chain: 0, Prio: o.EntryPrio, Protocol: EthAll, Handle: entryHandle,
		Actions: []Action{{Kind: ActGoto, Chain: base}}, Flags: o.Offload.flags(), Cookie: Cookie, Kind: "flower"}
}

// directionOf returns the pod direction a hook enforces.
func directionOf(h Hook) policy.Direction {
	if h == HookIngress {
		return policy.Egress
	}
	return policy.Ingress
}

// Validate checks that the rule set can be expressed exactly. A rule set
// that cannot is refused as a whole: the driver never installs a partial or
// wider pipeline.
func Validate(rs *policy.RuleSet) error {
	if rs == nil {
		return fmt.Errorf("nil rule set")
	}
	for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
		dr := rs.Direction(d)
		if !dr.Isolated {
			continue
		}
		if !dr.Stateful {
			return fmt.Errorf("attachment %s %s: stateless enforcement is not supported by the TC datapath (replies would be dropped)", rs.Attachment, d)
		}
		if len(dr.Rules) > maxRules {
			return fmt.Errorf("attachment %s %s: %d rules exceed the %d a generation can hold", rs.Attachment, d, len(dr.Rules), maxRules)
		}
		for i := range dr.Rules {
			if err := validateRule(&dr.Rules[i]); err != nil {
				return fmt.Errorf("attachment %s %s rule %d (%v): %w", rs.Attachment, d, i, dr.Rules[i].Origins, err)
			}
		}
	}
	return nil
}

func validateRule(r *policy.Rule) error {
	if !r.AnyPeer && len(r.Peers) == 0 {
		return fmt.Errorf("no peer: a rule allowing no peer must be omitted, not sent")
	}
	if r.AnyPeer && len(r.Peers) > 0 {
		return fmt.Errorf("both anyPeer and %d peers", len(r.Peers))
	}
	for _, p := range r.Peers {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return fmt.Errorf("peer %v is not a plain IPv4 or IPv6 prefix", p)
		}
		if p.Masked() != p {
			return fmt.Errorf("peer %v has host bits set", p)
		}
	}
	for _, pm := range r.Ports {
		if pm.Protocol.IPProto() == 0 {
			return fmt.Errorf("port %+v: unknown protocol %q", pm, pm.Protocol)
		}
		if pm.Port == 0 && pm.EndPort != 0 {
			return fmt.Errorf("port %v: endPort %d without port", pm, pm.EndPort)
		}
		if pm.Port != 0 && pm.EndPort < pm.Port {
			return fmt.Errorf("port %v: endPort %d below port %d", pm, pm.EndPort, pm.Port)
		}
	}
	return nil
}

// Compile turns a rule set into the TC program of a representor.
func Compile(rs *policy.RuleSet, opts Options) (*Program, error) {
	opts = opts.withDefaults()
	if err := Validate(rs); err != nil {
		return nil, err
	}
	p := &Program{opts: opts}
	zone := opts.Zones.Of(rs.Attachment.Network)
	anyIsolated := rs.Ingress.Isolated || rs.Egress.Isolated
	for _, h := range Hooks {
		dr := rs.Direction(directionOf(h))
		switch {
		case dr.Isolated:
			p.Hooks[h] = compileSection(h, dr, opts, zone, sectionRepresentor)
		case anyIsolated:
			// Not isolated, but the other direction is: connections that
			// start here must be committed so that the other hook
			// recognises their replies as established.
			p.Hooks[h] = compileTrackOnly(h, opts, zone)
		}
	}
	return p, nil
}

type builder struct {
	h     Hook
	opts  Options
	zone  uint16 // conntrack zone of the rule set's network
	prog  *hookProgram
	flags uint32
}

func (b *builder) add(chain uint32, prio, proto uint16, m Match, acts ...Action) {
	b.prog.filters = append(b.prog.filters, &Filter{Hook: b.h, Chain: chain, Prio: prio, Protocol: proto,
		Match: m, Actions: acts, Flags: b.flags, Cookie: Cookie, Kind: "flower"})
}

// variants calls fn for the untagged protocol and, unless NoVLAN, for the
// same match inside one 802.1Q tag.
func (b *builder) variants(chain uint32, prio, prioTagged, eth uint16, m Match, acts ...Action) {
	b.add(chain, prio, eth, m, acts...)
	if !b.opts.NoVLAN {
		m.VLANEthType = eth
		b.add(chain, prioTagged, Eth8021Q, m, acts...)
	}
}

func newBuilder(h Hook, opts Options, zone uint16) *builder {
	return &builder{h: h, opts: opts, zone: zone, flags: opts.Offload.flags(),
		prog: &hookProgram{roles: map[uint32]chainRole{}}}
}

func (b *builder) accept() []Action {
	return []Action{{Kind: ActCt, Zone: b.zone, Commit: true}, {Kind: ActAccept}}
}

// classify adds a section's classify chain: what must always pass (ARP,
// neighbour discovery), what goes through conntrack (IP: toState), and what
// else happens to the rest (QinQ, unknown ethertypes, 802.1Q carrying
// anything else).
func (b *builder) classify(toState []Action, rest Action) {
	pass := Action{Kind: ActAccept}
	gotoC := func(c uint32) Action { return Action{Kind: ActGoto, Chain: c} }
	b.variants(chainClassify, prioARP, prioARPTagged, EthARP, Match{}, pass)
	ndChain := chainClassify
	if !b.opts.Profile.ICMPType {
		// The target cannot match ICMPv6 types: every ICMPv6 packet goes
		// (in hardware) to chainND, whose filters are all software, so
		// its hardware miss continues in software, which passes ND and
		// sends the rest of ICMPv6 through conntrack as classify would.
		b.variants(chainClassify, prioND, prioNDTagged, EthIPv6, Match{IPProto: ProtoICMPv6}, gotoC(chainND))
		ndChain = chainND
		b.prog.roles[chainND] = chainRole{kind: roleFixed}
	}
	for _, t := range []uint8{133, 134, 135, 136} {
		b.variants(ndChain, prioND, prioNDTagged, EthIPv6, Match{IPProto: ProtoICMPv6, HasICMPType: true, ICMPType: t}, pass)
	}
	b.variants(chainClassify, prioIPv4, prioIPv4Tagged, EthIPv4, Match{}, toState...)
	b.variants(chainClassify, prioIPv6, prioIPv6Tagged, EthIPv6, Match{}, toState...)
	b.add(chainClassify, prioCatchAll, EthAll, Match{}, rest)
	if ndChain == chainND {
		b.variants(chainND, prioIPv6, prioIPv6Tagged, EthIPv6, Match{}, toState...)
		b.add(chainND, prioCatchAll, EthAll, Match{}, rest)
	}
	b.prog.roles[chainClassify] = chainRole{kind: roleFixed}
}

func compileTrackOnly(h Hook, opts Options, zone uint16) *hookProgram {
	b := newBuilder(h, opts, zone)
	// act_ct drops what is not IPv4/IPv6, so only IP (tagged or not) goes
	// through it; everything else passes by falling off the chain.
	b.variants(chainClassify, prioIPv4, prioIPv4Tagged, EthIPv4, Match{}, b.accept()...)
	b.variants(chainClassify, prioIPv6, prioIPv6Tagged, EthIPv6, Match{}, b.accept()...)
	b.prog.roles[chainClassify] = chainRole{kind: roleFixed}
	return b.prog
}

// compileSection compiles an isolated direction: on a representor's hook
// (sectionRepresentor), or as a section of a bridge port (the other kinds).
func compileSection(h Hook, dr *policy.DirectionRules, opts Options, zone uint16, kind sectionKind) *hookProgram {
	b := newBuilder(h, opts, zone)
	accept := b.accept()
	if kind == sectionSender {
		accept = []Action{{Kind: ActGoto, Chain: gotoDispatch}}
	}
	pass := Action{Kind: ActAccept}
	drop := Action{Kind: ActDrop}
	gotoC := func(c uint32) Action { return Action{Kind: ActGoto, Chain: c} }
	toState := []Action{{Kind: ActCt, Zone: b.zone}, gotoC(chainState)}
	if kind == sectionReceiverTracked {
		toState = toState[1:] // conntrack ran in the sender's section
	}
	for _, c := range []uint32{chainClassify, chainState, chainNew} {
		b.prog.roles[c] = chainRole{kind: roleFixed}
	}

	if kind == sectionReceiverTracked {
		// The sender's section passed ARP and neighbour discovery and ran
		// conntrack: the state decides (a frame that is no IP has none,
		// and is dropped there).
		b.add(chainClassify, prioCatchAll, EthAll, Match{}, gotoC(chainState))
	} else {
		b.classify(toState, drop)
	}

	// State: established and related pass, new connections are decided by
	// the policy, anything else (invalid) is dropped.
	est := Match{CtState: CtTracked | CtEstablished, CtStateMask: CtTracked | CtEstablished}
	related := Match{CtState: CtTracked | CtRelated, CtStateMask: CtTracked | CtRelated | CtInvalid}
	newConn := Match{CtState: CtTracked | CtNew, CtStateMask: CtTracked | CtNew}
	prioNew, prioRel := prioNewConn, prioRelated
	if !opts.Profile.CtNew {
		// The same packets without +new: act_ct gives a tracked packet
		// exactly one of new, est, rel, inv, so "+trk-est-rel-inv" is
		// "+trk+new" in a form mlx5 offloads before 6.3.
		newConn = Match{CtState: CtTracked, CtStateMask: CtTracked | CtEstablished | CtRelated | CtInvalid}
	}
	if opts.Profile.Hardware {
		prioNew, prioRel = prioNewConnHW, prioRelatedHW
	}
	b.add(chainState, prioEstablished, EthAll, est, pass)
	b.add(chainState, prioRel, EthAll, related, pass)
	b.add(chainState, prioNew, EthAll, newConn, gotoC(chainNew))
	b.add(chainState, prioCatchAll, EthAll, Match{}, drop)

	// New: every new ICMP/ICMPv6 packet per the flags, as
	// multi-networkpolicy-iptables' --accept-icmp accepts all ICMP (no
	// type match, which mlx5 offloads only with its flex parser), then the
	// rules in order.
	if dr.AcceptICMP {
		b.variants(chainNew, prioEcho, prioEchoTagged, EthIPv4, Match{IPProto: ProtoICMP}, accept...)
	}
	if dr.AcceptICMPv6 {
		b.variants(chainNew, prioEcho6, prioEcho6Tagged, EthIPv6, Match{IPProto: ProtoICMPv6}, accept...)
	}
	next := func(i int) Action {
		if i+1 < len(dr.Rules) {
			return gotoC(rulePeerChain(i + 1))
		}
		return drop
	}
	if len(dr.Rules) == 0 {
		b.add(chainNew, prioCatchAll, EthAll, Match{}, drop)
	} else {
		b.add(chainNew, prioCatchAll, EthAll, Match{}, gotoC(rulePeerChain(0)))
	}
	remoteIsDst := h == HookIngress // pod egress: the peer is the destination
	for i := range dr.Rules {
		r := &dr.Rules[i]
		peerChain := rulePeerChain(i)
		b.prog.roles[peerChain] = chainRole{kind: rolePeers, rule: i}
		var has4, has6 bool
		onPeer := func(v6 bool) []Action {
			if len(r.Ports) == 0 {
				return accept
			}
			return []Action{gotoC(rulePortChain(i, v6))}
		}
		if r.AnyPeer {
			has4, has6 = true, true
			b.variants(peerChain, prioIPv4, prioIPv4Tagged, EthIPv4, Match{}, onPeer(false)...)
			b.variants(peerChain, prioIPv6, prioIPv6Tagged, EthIPv6, Match{}, onPeer(true)...)
		} else {
			for _, pfx := range r.Peers {
				m := Match{}
				switch {
				case pfx.Bits() == 0:
					// A /0 is the whole family: flower stores (and dumps)
					// a zero mask as no key, so we compile it as such.
				case remoteIsDst:
					m.Dst = pfx
				default:
					m.Src = pfx
				}
				if pfx.Addr().Is4() {
					has4 = true
					b.variants(peerChain, prioIPv4, prioIPv4Tagged, EthIPv4, m, onPeer(false)...)
				} else {
					has6 = true
					b.variants(peerChain, prioIPv6, prioIPv6Tagged, EthIPv6, m, onPeer(true)...)
				}
			}
		}
		b.add(peerChain, prioCatchAll, EthAll, Match{}, next(i))
		if len(r.Ports) == 0 {
			continue
		}
		for _, fam := range []struct {
			v6  bool
			has bool
			eth uint16
			p   uint16
			pt  uint16
		}{{false, has4, EthIPv4, prioIPv4, prioIPv4Tagged}, {true, has6, EthIPv6, prioIPv6, prioIPv6Tagged}} {
			if !fam.has {
				continue
			}
			pc := rulePortChain(i, fam.v6)
			b.prog.roles[pc] = chainRole{kind: rolePorts, rule: i}
			seen := map[Match]bool{}
			for _, pm := range r.Ports {
				for _, m := range b.portMatches(pm) {
					if seen[m] {
						continue // flower refuses two filters with the same key
					}
					seen[m] = true
					b.variants(pc, fam.p, fam.pt, fam.eth, m, accept...)
				}
			}
			b.add(pc, prioCatchAll, EthAll, Match{}, next(i))
		}
	}
	opts.Profile.keepMissInSoftware(b.prog.filters)
	return b.prog
}

// portMatches returns the flower matches of one port match: one filter, or
// the masked-port cover of a range the profile cannot offload. Covers of
// overlapping port matches may share blocks; the caller deduplicates them.
func (b *builder) portMatches(pm policy.PortMatch) []Match {
	m := Match{IPProto: pm.Protocol.IPProto()}
	switch {
	case pm.AllPorts():
		return []Match{m}
	case pm.Port == pm.EndPort || b.opts.Profile.PortRanges:
		m.DstPortMin, m.DstPortMax = pm.Port, pm.EndPort
		return []Match{m}
	}
	var out []Match
	for _, pmk := range MaskedPorts(pm.Port, pm.EndPort) {
		m.DstPortMin, m.DstPortMax, m.DstPortMask = pmk.Value, pmk.Value, pmk.Mask
		if pmk.Mask == 0xFFFF {
			m.DstPortMask = 0
		}
		out = append(out, m)
	}
	return out
}

// FilterCount returns how many filters the program installs, the entry
// filters included.
func (p *Program) FilterCount() int {
	n := 0
	for _, hp := range p.Hooks {
		if hp != nil {
			n += len(hp.filters) + 1
		}
	}
	return n
}

// Filters returns the program's filters as installed in generation slot 0
// (entry filters included), for rendering and golden files.
func (p *Program) Filters() []*Filter {
	var out []*Filter
	for _, h := range Hooks {
		hp := p.Hooks[h]
		if hp == nil {
			continue
		}
		base := p.opts.slotBase(0)
		out = append(out, hp.entryFilters(h, base, p.opts)...)
		out = append(out, hp.materialize(base)...)
	}
	return out
}
