package tcdriver

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"sort"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// Bridge is the unit the driver enforces in the bridge placement: one Linux
// bridge (accelerated-bridge-cni's) with its uplink representor(s) and the
// VF representors of the local attachments on it.
//
// mlx5 offloads TC filters on the ingress hook of a port only, and with
// bridge offload a frame switched in hardware never reaches the
// destination's egress hook. So every verdict is taken on the ingress hook
// of the port a frame enters by: a pod's representor carries the pod's
// egress policy and, dispatched on the destination MAC, the ingress policy
// of every other local pod on the bridge; the uplink carries the ingress
// policy of every local pod. Nothing that decides sits on an egress hook.
type Bridge struct {
	// Name names the bridge in errors and logs.
	Name string
	// Uplinks are the bridge's ports that are no local attachment's
	// representor: the uplink representor(s), by which frames from the
	// rest of the network enter, and any other port (an unmanaged VF's
	// representor, a veth). Every port a frame can enter the bridge by
	// must be listed: a frame entering by a port without our filters
	// reaches the pods' vports without their ingress rules. Frames
	// entering by these ports are decided by the receivers' sections.
	Uplinks []string
	// Ports are the local attachments on the bridge.
	Ports []BridgePort
}

// BridgePort is one local attachment on a bridge.
type BridgePort struct {
	// Dev is the VF representor.
	Dev string
	// MAC is the VF's address, the dispatch key: the eswitch delivers a
	// frame by its destination MAC, so a frame for this pod is decided by
	// this pod's ingress rules whatever its IP header says.
	MAC net.HardwareAddr
	// RuleSet is what the attachment enforces.
	RuleSet *policy.RuleSet
	// IPs are the attachment's addresses on its network. A frame entering
	// by this port is judged, by the other local pods' ingress rules, as
	// coming from these addresses: one with another source address (a
	// spoofed one, or traffic the pod routes) matches none of their rules
	// unless Options.RoutedSources. Empty: every source is judged by the
	// whole rules (larger sections on this port).
	IPs []netip.Addr
}

// Chains of a port's generation in the bridge placement, relative to its
// base. Each section has the layout of a representor generation (classify,
// state, new, rules) compressed into sectionSize chains.
const (
	sectionSize uint32 = 4096
	// chainDispatch decides where a frame goes after the sender: to the
	// section of the local pod whose MAC it is for, or on.
	chainDispatch uint32 = 2 * sectionSize
	// chainDispatchND is the software-only neighbour-discovery check of
	// group frames (profiles without ICMP type match).
	chainDispatchND uint32 = 2*sectionSize + 1
	// chainReceivers is the first receiver section: receiver section k
	// occupies [chainReceivers+k*sectionSize, chainReceivers+(k+1)*sectionSize).
	// The port's own pod (its egress) has one of two sender sections
	// before dispatch, [0, sectionSize) and [sectionSize, 2*sectionSize),
	// so that every goto of the pipeline goes forward. Sections are
	// numbered so that one can be rebuilt beside the installed one and its
	// entry moved to it in one replace.
	chainReceivers uint32 = 3 * sectionSize
	// MaxBridgePorts is how many attachments a bridge can have: half the
	// receiver sections a generation holds, so that every section can be
	// rebuilt beside the installed one in the same change.
	MaxBridgePorts = int((slotSize-chainReceivers)/sectionSize) / 2
	// maxSectionRules keeps a section's rule chains inside it.
	maxSectionRules = int((sectionSize - chainRules - 1) / 3)
)

// Priorities of the dispatch chain.
const (
	prioDispatchEntry   uint16 = 1 // dst_mac of a local pod → its section
	prioGroupND         uint16 = 2 // group ICMPv6 → ND check
	prioGroupNDTagged   uint16 = 3
	prioGroupIPv4       uint16 = 4 // group IP → drop
	prioGroupIPv6       uint16 = 5
	prioGroupIPv4Tagged uint16 = 6
	prioGroupIPv6Tagged uint16 = 7
	prioCommitIPv4      uint16 = 10 // the rest: commit, pass
	prioCommitIPv6      uint16 = 11
	prioCommitIPv4Tag   uint16 = 12
	prioCommitIPv6Tag   uint16 = 13
)

// selfSection keys the sender section in a port's section numbers (the
// receivers are keyed by their MAC).
var selfSection = MAC{}

// gotoDispatch is the placeholder target of the sender section's accepts,
// resolved when the section is placed.
const gotoDispatch = ^uint32(0)

func receiverSection(k int) uint32 { return chainReceivers + uint32(k)*sectionSize }

// senderSection is the chain of sender section k (0 or 1).
func senderSection(k int) uint32 { return uint32(k) * sectionSize }

// isSection reports whether rel (relative to a generation base) is in a
// sender or receiver section, not in dispatch.
func isSection(rel uint32) bool { return rel < chainDispatch || rel >= chainReceivers }

// sectionOf returns the first chain of the section holding rel.
func sectionOf(rel uint32) uint32 { return rel - rel%sectionSize }

// BridgeProgram is the compiled bridge: per port, the program of its
// ingress hook (nil: the port needs no filter).
type BridgeProgram struct {
	Ports map[string]*hookProgram
	// Order lists the ports, uplinks first.
	Order []string
	opts  Options
}

// Filters returns a port's filters as installed in generation slot 0,
// entry filter included.
func (p *BridgeProgram) Filters(dev string) []*Filter {
	hp := p.Ports[dev]
	if hp == nil {
		return nil
	}
	base := p.opts.slotBase(0)
	return append(hp.entryFilters(HookIngress, base, p.opts), hp.materialize(base)...)
}

// FilterCount is the number of filters of every port, entries included.
func (p *BridgeProgram) FilterCount() int {
	n := 0
	for _, hp := range p.Ports {
		if hp != nil {
			n += len(hp.filters) + 1
		}
	}
	return n
}

// PortError is a port of a bridge whose rule set cannot be enforced as
// given.
type PortError struct {
	Dev string
	Err error
}

func (e *PortError) Error() string { return fmt.Sprintf("representor %s: %v", e.Dev, e.Err) }
func (e *PortError) Unwrap() error { return e.Err }

// ValidateBridge checks every port; the error lists each port that cannot
// be enforced exactly (a *PortError each, joined).
func ValidateBridge(b *Bridge) error {
	var errs []error
	seen := map[MAC]string{}
	devs := map[string]bool{}
	for _, u := range b.Uplinks {
		devs[u] = true
	}
	for _, pt := range b.Ports {
		err := validatePort(&pt)
		if err == nil && devs[pt.Dev] {
			err = fmt.Errorf("listed twice on bridge %s", b.Name)
		}
		devs[pt.Dev] = true
		if m, ok := MACOf(pt.MAC); ok && err == nil {
			if other, dup := seen[m]; dup {
				err = fmt.Errorf("MAC %s is also the MAC of %s on bridge %s: frames for it cannot be dispatched to one pod's rules", m, other, b.Name)
			}
			seen[m] = pt.Dev
		}
		if err != nil {
			errs = append(errs, &PortError{Dev: pt.Dev, Err: err})
		}
	}
	if len(b.Ports) > MaxBridgePorts {
		errs = append(errs, fmt.Errorf("bridge %s: %d attachments exceed the %d a port can dispatch to", b.Name, len(b.Ports), MaxBridgePorts))
	}
	return errors.Join(errs...)
}

func validatePort(pt *BridgePort) error {
	if err := Validate(pt.RuleSet); err != nil {
		return err
	}
	for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
		if dr := pt.RuleSet.Direction(d); dr.Isolated && len(dr.Rules) > maxSectionRules {
			return fmt.Errorf("attachment %s %s: %d rules exceed the %d a bridge section can hold", pt.RuleSet.Attachment, d, len(dr.Rules), maxSectionRules)
		}
	}
	m, ok := MACOf(pt.MAC)
	switch {
	case !ok && pt.RuleSet.Ingress.Isolated:
		return fmt.Errorf("attachment %s: no MAC address known (%q), so frames for it cannot be dispatched to its ingress rules", pt.RuleSet.Attachment, pt.MAC)
	case ok && (m.IsGroup() || m == MAC{}):
		return fmt.Errorf("attachment %s: MAC %s is not a unicast address", pt.RuleSet.Attachment, m)
	}
	return nil
}

// CompileBridge compiles every port of a valid bridge (see ValidateBridge)
// with receiver sections numbered in MAC order. The driver compiles each
// port with the sections it finds installed instead (compilePort), so that
// a pod joining or leaving changes only its own section.
func CompileBridge(b *Bridge, opts Options) (*BridgeProgram, error) {
	opts = opts.withDefaults()
	if err := ValidateBridge(b); err != nil {
		return nil, err
	}
	p := &BridgeProgram{Ports: map[string]*hookProgram{}, opts: opts}
	for _, dev := range portOrder(b) {
		p.Order = append(p.Order, dev)
		p.Ports[dev] = compilePort(b, dev, opts, nil)
	}
	return p, nil
}

// portOrder lists the uplinks, then the representors, each sorted.
func portOrder(b *Bridge) []string {
	ups := append([]string(nil), b.Uplinks...)
	sort.Strings(ups)
	var reps []string
	for _, pt := range b.Ports {
		reps = append(reps, pt.Dev)
	}
	sort.Strings(reps)
	return append(ups, reps...)
}

func isolatesAny(rs *policy.RuleSet) bool { return rs.Ingress.Isolated || rs.Egress.Isolated }

// compilePort compiles the ingress program of one port of a valid bridge.
// sections maps the receivers already installed on the port to their
// section number, which they keep; the others take the lowest free ones.
func compilePort(b *Bridge, dev string, opts Options, sections map[MAC]int) *hookProgram {
	return compilePortFresh(b, dev, opts, sections, nil)
}

// compilePortFresh is compilePort with the receivers in fresh taking new
// numbers (their installed ones stay taken): their sections are rebuilt
// beside the installed ones.
func compilePortFresh(b *Bridge, dev string, opts Options, sections map[MAC]int, fresh map[MAC]bool) *hookProgram {
	var self *BridgePort
	for i := range b.Ports {
		if b.Ports[i].Dev == dev {
			self = &b.Ports[i]
		}
	}
	uplink := self == nil
	// Receivers: the other local pods whose frames this port must decide.
	// From the uplink every pod with an isolated direction (its ingress
	// rules, or a commit so that its egress recognises replies); from a
	// pod's port only pods with isolated ingress (the dispatch catch-all
	// commits every other frame).
	type receiver struct {
		pt  *BridgePort
		mac MAC
	}
	var rx []receiver
	anyIngress, anyEgress := false, false
	for i := range b.Ports {
		pt := &b.Ports[i]
		if pt == self {
			continue
		}
		anyIngress = anyIngress || pt.RuleSet.Ingress.Isolated
		anyEgress = anyEgress || pt.RuleSet.Egress.Isolated
		m, ok := MACOf(pt.MAC)
		if ok && (pt.RuleSet.Ingress.Isolated || uplink && pt.RuleSet.Egress.Isolated) {
			rx = append(rx, receiver{pt, m})
		}
	}
	// A port needs no filter only when nothing it carries is isolated: a
	// connection to another pod whose egress is isolated must be committed
	// here (the dispatch catch-all), or that pod's sender section sees its
	// reply untracked (a SYN-ACK never seen, then the ACK invalid).
	if len(rx) == 0 && (uplink || !isolatesAny(self.RuleSet) && !anyEgress) && !anyIngress {
		return nil
	}
	sort.Slice(rx, func(i, j int) bool { return string(rx[i].mac[:]) < string(rx[j].mac[:]) })

	prog := &hookProgram{roles: map[uint32]chainRole{}, bridge: true}

	// Section numbers: installed sections keep theirs, the others (and
	// those in fresh) take the lowest numbers no installed section uses,
	// so that a section is only ever created or removed as a whole.
	taken := map[int]bool{}
	number := map[MAC]int{}
	for _, r := range rx {
		if k, ok := sections[r.mac]; ok && !fresh[r.mac] && k >= 0 && k < 2*MaxBridgePorts && !taken[k] {
			number[r.mac], taken[k] = k, true
		}
	}
	for key, k := range sections {
		if key != selfSection {
			taken[k] = true
		}
	}
	next := 0
	for _, r := range rx {
		if _, ok := number[r.mac]; !ok {
			for taken[next] {
				next++
			}
			number[r.mac], taken[next] = next, true
		}
	}
	// The sender section keeps its place, or takes the other one.
	self0, installed := sections[selfSection]
	switch {
	case !installed || self0 < 0 || self0 > 1:
		number[selfSection] = 0
	case fresh[selfSection]:
		number[selfSection] = 1 - self0
	default:
		number[selfSection] = self0
	}

	var zone uint16
	if !uplink {
		zone = opts.Zones.Of(self.RuleSet.Attachment.Network)
		var sender *hookProgram
		if self.RuleSet.Egress.Isolated {
			sender = compileSection(HookIngress, &self.RuleSet.Egress, opts, zone, sectionSender)
		} else {
			sender = compileOpenSender(opts, zone)
		}
		prog.entries = []*Filter{opts.entryFilter(HookIngress, senderSection(number[selfSection]))}
		place(prog, sender, senderSection(number[selfSection]))
	}
	d := newBuilder(HookIngress, opts, zone)
	for _, r := range rx {
		k := number[r.mac]
		rs := r.pt.RuleSet
		rzone := opts.Zones.Of(rs.Attachment.Network)
		entry := Match{DstMAC: r.mac, DstMACMask: exactMAC}
		var sec *hookProgram
		switch {
		case uplink && rs.Ingress.Isolated:
			// From the rest of the network: the pod's whole ingress
			// pipeline, conntrack in its own zone.
			sec = compileSection(HookEgress, &rs.Ingress, opts, rzone, sectionRepresentor)
		case uplink:
			sec = compileTrackOnlySection(opts, rzone)
		case rzone != zone:
			// Another network on the same bridge: its connections are
			// tracked in another zone, so this port cannot decide them.
			// Such frames should never be bridged; fail closed.
			d.add(chainDispatch, prioDispatchEntry, EthAll, entry, Action{Kind: ActDrop})
			continue
		default:
			// Software-only on every profile (see below), so compiled
			// with the software profile's exact forms.
			dr := &rs.Ingress
			if !opts.RoutedSources && len(self.IPs) > 0 {
				dr = fromSender(dr, self.IPs)
			}
			soft := opts
			soft.Profile = ProfileSoftware
			sec = compileSection(HookEgress, dr, soft, zone, sectionReceiverTracked)
		}
		place(prog, sec, receiverSection(k))
		if uplink {
			prog.entries = append(prog.entries, entryTo(opts, entry, receiverSection(k)))
		} else {
			d.add(chainDispatch, prioDispatchEntry, EthAll, entry, Action{Kind: ActGoto, Chain: receiverSection(k)})
		}
	}

	// Group frames (broadcast, multicast) reach every port of the bridge:
	// one frame, many receivers, so no single pod's ingress rules can
	// decide it at the port it enters by. With any isolated ingress on
	// the bridge, IP to a group address is dropped (ARP and neighbour
	// discovery pass).
	if anyIngress {
		group := Match{DstMAC: groupMAC, DstMACMask: groupMAC}
		if uplink {
			prog.entries = append(prog.entries, entryTo(opts, group, chainDispatch))
		}
		icmp6 := group
		icmp6.IPProto = ProtoICMPv6
		if opts.Profile.ICMPType {
			for _, t := range []uint8{133, 134, 135, 136} {
				m := icmp6
				m.HasICMPType, m.ICMPType = true, t
				d.variants(chainDispatch, prioGroupND, prioGroupNDTagged, EthIPv6, m, Action{Kind: ActAccept})
			}
		} else {
			d.variants(chainDispatch, prioGroupND, prioGroupNDTagged, EthIPv6, icmp6, Action{Kind: ActGoto, Chain: chainDispatchND})
			for _, t := range []uint8{133, 134, 135, 136} {
				m := Match{IPProto: ProtoICMPv6, HasICMPType: true, ICMPType: t}
				d.variants(chainDispatchND, prioND, prioNDTagged, EthIPv6, m, Action{Kind: ActAccept})
			}
			d.add(chainDispatchND, prioCatchAll, EthAll, Match{}, Action{Kind: ActDrop})
			prog.roles[chainDispatchND] = chainRole{kind: roleFixed}
		}
		d.variants(chainDispatch, prioGroupIPv4, prioGroupIPv4Tagged, EthIPv4, group, Action{Kind: ActDrop})
		d.variants(chainDispatch, prioGroupIPv6, prioGroupIPv6Tagged, EthIPv6, group, Action{Kind: ActDrop})
	}
	if !uplink {
		// What no receiver section took: to a pod without isolated
		// ingress, or out by the uplink. Committed, so that replies are
		// established wherever they enter.
		d.variants(chainDispatch, prioCommitIPv4, prioCommitIPv4Tag, EthIPv4, Match{}, d.accept()...)
		d.variants(chainDispatch, prioCommitIPv6, prioCommitIPv6Tag, EthIPv6, Match{}, d.accept()...)
	}
	if !uplink || anyIngress {
		// An explicit pass, so that in hardware a frame for no local pod
		// (or a group frame that is no IP) goes on to the bridge instead
		// of missing to software.
		d.add(chainDispatch, prioCatchAll, EthAll, Match{}, Action{Kind: ActAccept})
		opts.Profile.keepMissInSoftware(d.prog.filters)
		prog.filters = append(prog.filters, d.prog.filters...)
		prog.roles[chainDispatch] = chainRole{kind: roleDispatch}
	}
	if !uplink && opts.Profile.Hardware {
		// On a representor, hardware leaves the sender section only for
		// what it sends to software anyway: its `ct` passes established
		// connections (+est) and misses for every other packet, because
		// mlx5's CT table holds established TCP and confirmed UDP only.
		// So dispatch and the receiver sections are software-only: one
		// hardware rule per filter of each pod's own pipeline instead of
		// one per receiver and port. On the uplink they are the fast path
		// of established traffic (a section's ct and +est) and stay.
		for _, f := range prog.filters {
			if f.Chain >= chainDispatch {
				f.Flags = f.Flags&^flagSkipSW | flagSkipHW
			}
		}
	}
	prog.recompile = func(more map[MAC]bool) *hookProgram {
		all := maps.Clone(more)
		maps.Copy(all, fresh)
		return compilePortFresh(b, dev, opts, sections, all)
	}
	return prog
}

// entryTo is an entry filter of the uplink: frames matching m go to
// chain target of the generation.
func entryTo(opts Options, m Match, target uint32) *Filter {
	return &Filter{Hook: HookIngress, Chain: 0, Prio: opts.EntryPrio, Protocol: EthAll, Match: m,
		Actions: []Action{{Kind: ActGoto, Chain: target}}, Flags: opts.Offload.flags(), Cookie: Cookie, Kind: "flower"}
}

// sectionKind says how a section compiled by compileSection starts and
// ends.
type sectionKind uint8

const (
	// sectionRepresentor is a whole hook pipeline: conntrack, then the
	// rules, an accept commits the connection.
	sectionRepresentor sectionKind = iota
	// sectionSender is a pod's egress on its own port: an accept goes on
	// to dispatch, which commits.
	sectionSender
	// sectionReceiverTracked is a pod's ingress on another pod's port of
	// the same network: the sender's section already ran conntrack in the
	// zone, so the section only decides new connections.
	sectionReceiverTracked
)

// compileOpenSender is the sender section of a pod whose egress is not
// isolated, on a bridge where others are: everything passes, through
// conntrack and dispatch so that the receivers decide.
func compileOpenSender(opts Options, zone uint16) *hookProgram {
	b := newBuilder(HookIngress, opts, zone)
	pass := Action{Kind: ActAccept}
	toDispatch := Action{Kind: ActGoto, Chain: gotoDispatch}
	// ARP and neighbour discovery pass here, before conntrack (which marks
	// ND invalid), as in an isolated sender's section; IP goes through
	// conntrack; the rest goes to dispatch, where a receiver decides.
	b.classify([]Action{{Kind: ActCt, Zone: zone}, {Kind: ActGoto, Chain: chainState}}, toDispatch)
	b.add(chainState, prioEstablished, EthAll, Match{CtState: CtTracked | CtEstablished, CtStateMask: CtTracked | CtEstablished}, pass)
	b.add(chainState, prioCatchAll, EthAll, Match{}, toDispatch)
	b.prog.roles[chainState] = chainRole{kind: roleFixed}
	opts.Profile.keepMissInSoftware(b.prog.filters)
	return b.prog
}

// fromSender is a receiver's ingress rules as they apply on the port of
// one local sender: a frame entering by that port is judged as coming from
// the sender's own addresses, so each rule keeps only those of its peers
// (and is omitted when it has none), and a frame with another source
// matches no rule. This is what keeps the sections every port carries
// small: their size follows the rules that allow the sender, not every
// peer of the receiver.
func fromSender(dr *policy.DirectionRules, ips []netip.Addr) *policy.DirectionRules {
	out := *dr
	out.Rules = nil
	for _, r := range dr.Rules {
		var peers []netip.Prefix
		seen := map[netip.Addr]bool{}
		for _, ip := range ips {
			if ip.IsValid() && !seen[ip] && r.MatchesPeer(ip) {
				seen[ip] = true
				peers = append(peers, netip.PrefixFrom(ip, ip.BitLen()))
			}
		}
		if len(peers) > 0 {
			nr := r
			nr.AnyPeer, nr.Peers = false, peers
			out.Rules = append(out.Rules, nr)
		}
	}
	return &out
}

// compileTrackOnlySection commits, on the uplink, the connections opened
// to a pod whose ingress is open, so that its isolated egress recognises
// the replies.
func compileTrackOnlySection(opts Options, zone uint16) *hookProgram {
	b := newBuilder(HookIngress, opts, zone)
	b.variants(chainClassify, prioIPv4, prioIPv4Tagged, EthIPv4, Match{}, b.accept()...)
	b.variants(chainClassify, prioIPv6, prioIPv6Tagged, EthIPv6, Match{}, b.accept()...)
	b.add(chainClassify, prioCatchAll, EthAll, Match{}, Action{Kind: ActAccept})
	b.prog.roles[chainClassify] = chainRole{kind: roleFixed}
	return b.prog
}

// place copies a section compiled at chain 0 (its ND chain at chainND)
// into prog at offset, and resolves gotoDispatch.
func place(prog, sec *hookProgram, offset uint32) {
	reloc := func(c uint32) uint32 {
		switch c {
		case gotoDispatch:
			return chainDispatch
		case chainND:
			return offset + sectionSize - 1
		}
		return offset + c
	}
	for _, f := range sec.filters {
		c := cloneFilter(f)
		c.Chain = reloc(c.Chain)
		for i := range c.Actions {
			if c.Actions[i].Kind == ActGoto {
				c.Actions[i].Chain = reloc(c.Actions[i].Chain)
			}
		}
		c.Hook = HookIngress
		prog.filters = append(prog.filters, c)
	}
	for c, role := range sec.roles {
		role.section = offset
		prog.roles[reloc(c)] = role
	}
}
