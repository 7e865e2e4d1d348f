package tcdriver

import (
	"bytes"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Hook is one of the two clsact hooks of a representor.
//
// The representor is the switch side of the VF: what the pod sends arrives
// on the representor's ingress hook, what is delivered to the pod leaves
// through its egress hook. So HookIngress enforces the pod's Egress policy
// and HookEgress the pod's Ingress policy.
type Hook uint8

const (
	HookIngress Hook = iota
	HookEgress
)

// Hooks lists both hooks in a stable order.
var Hooks = []Hook{HookIngress, HookEgress}

func (h Hook) String() string {
	if h == HookEgress {
		return "egress"
	}
	return "ingress"
}

// parent is the clsact parent handle of the hook (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_{INGRESS,EGRESS})).
func (h Hook) parent() uint32 {
	if h == HookEgress {
		return 0xFFFFFFF3
	}
	return 0xFFFFFFF2
}

// Ethertypes used as tcf_proto protocols and flower eth_type keys.
const (
	EthAll    uint16 = 0x0003
	EthIPv4   uint16 = 0x0800
	EthARP    uint16 = 0x0806
	EthIPv6   uint16 = 0x86DD
	Eth8021Q  uint16 = 0x8100
	Eth8021AD uint16 = 0x88A8
)

func ethName(e uint16) string {
	switch e {
	case EthAll:
		return "all"
	case EthIPv4:
		return "ip"
	case EthARP:
		return "arp"
	case EthIPv6:
		return "ipv6"
	case Eth8021Q:
		return "802.1Q"
	case Eth8021AD:
		return "802.1ad"
	}
	return fmt.Sprintf("0x%04x", e)
}

// IP protocol numbers.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
	ProtoSCTP   uint8 = 132
)

func ipProtoName(p uint8) string {
	switch p {
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMPv6:
		return "icmpv6"
	case ProtoSCTP:
		return "sctp"
	}
	return fmt.Sprintf("%d", p)
}

// Conntrack state flags as flower matches them (TCA_FLOWER_KEY_CT_FLAGS_*).
const (
	CtNew         uint16 = 1 << 0
	CtEstablished uint16 = 1 << 1
	CtRelated     uint16 = 1 << 2
	CtTracked     uint16 = 1 << 3
	CtInvalid     uint16 = 1 << 4
	CtReply       uint16 = 1 << 5
)

func ctStateString(state, mask uint16) string {
	var b strings.Builder
	for _, f := range []struct {
		bit  uint16
		name string
	}{{CtTracked, "trk"}, {CtNew, "new"}, {CtEstablished, "est"}, {CtRelated, "rel"}, {CtInvalid, "inv"}, {CtReply, "rpl"}} {
		if mask&f.bit == 0 {
			continue
		}
		if state&f.bit != 0 {
			b.WriteString("+")
		} else {
			b.WriteString("-")
		}
		b.WriteString(f.name)
	}
	return b.String()
}

// Match is the subset of flower keys the pipeline uses. Zero values mean
// "not matched".
type Match struct {
	// VLANEthType is the ethertype inside a single 802.1Q tag; only set on
	// filters whose protocol is 802.1Q.
	VLANEthType uint16
	IPProto     uint8
	Src         netip.Prefix
	Dst         netip.Prefix
	// DstPortMin..DstPortMax is the destination port range; equal values
	// mean one port (flower dst_port), zero means any port.
	DstPortMin, DstPortMax uint16
	// DstPortMask, when not zero, makes the port a masked one (flower
	// dst_port VALUE/MASK): a port p matches when p&DstPortMask ==
	// DstPortMin (DstPortMax equals DstPortMin). 0xFFFF is stored as 0.
	DstPortMask          uint16
	HasICMPType          bool
	ICMPType             uint8
	CtState, CtStateMask uint16
	// DstMAC/DstMACMask match the destination MAC (flower dst_mac
	// VALUE/MASK); a zero mask means not matched. The bridge placement
	// dispatches on it.
	DstMAC, DstMACMask MAC
}

// MAC is an Ethernet address, comparable so that a Match can be a map key.
type MAC [6]byte

// MACOf converts a hardware address; ok is false unless it is 6 bytes.
func MACOf(hw []byte) (m MAC, ok bool) {
	if len(hw) != 6 {
		return m, false
	}
	copy(m[:], hw)
	return m, true
}

// exactMAC is the mask of a whole address.
var exactMAC = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// groupMAC is the I/G bit: value and mask of every multicast and
// broadcast destination.
var groupMAC = MAC{0x01}

func (m MAC) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// IsGroup reports a multicast or broadcast address.
func (m MAC) IsGroup() bool { return m[0]&1 != 0 }

// ActionKind is what an action does.
type ActionKind uint8

const (
	// ActAccept ends classification and lets the packet pass (gact pass).
	ActAccept ActionKind = iota + 1
	// ActDrop drops the packet (gact drop).
	ActDrop
	// ActGoto continues classification in another chain (gact goto chain).
	ActGoto
	// ActCt sends the packet through conntrack in Zone, committing the
	// connection when Commit, and continues with the next action (pipe).
	ActCt
)

// Action is one TC action of a filter.
type Action struct {
	Kind   ActionKind
	Chain  uint32 // ActGoto
	Zone   uint16 // ActCt
	Commit bool   // ActCt
}

func (a Action) String() string {
	switch a.Kind {
	case ActAccept:
		return "pass"
	case ActDrop:
		return "drop"
	case ActGoto:
		return fmt.Sprintf("goto chain %d", a.Chain)
	case ActCt:
		if a.Commit {
			return fmt.Sprintf("ct commit zone %d pipe", a.Zone)
		}
		return fmt.Sprintf("ct zone %d pipe", a.Zone)
	}
	return fmt.Sprintf("action(%d)", a.Kind)
}

// Filter is one flower filter on a hook.
type Filter struct {
	Hook     Hook
	Chain    uint32
	Prio     uint16
	Protocol uint16
	Handle   uint32
	Match    Match
	Actions  []Action
	// Flags are the TCA_CLS_FLAGS_SKIP_* flags the filter was installed with.
	Flags uint32
	// Cookie is the action cookie of the filter's actions: ours when it
	// equals the driver's cookie.
	Cookie []byte
	// InHW is read back from the kernel: the filter is offloaded to hardware.
	InHW bool
	// InHWCount is read back from the kernel: how many devices hold the
	// filter in hardware (one for a port's own filter; a shared block's
	// is installed once per bound port).
	InHWCount uint32
	// Packets and Bytes are read back from the kernel: what the filter
	// matched, in software and in hardware.
	Packets, Bytes uint64
	// Foreign marks a filter the driver did not install (or cannot parse);
	// it is never modified.
	Foreign bool
	// Kind is the classifier kind of a foreign filter ("flower" for ours).
	Kind string
}

// Cookie marks actions installed by this driver (TC action cookie, ≤ 16 bytes).
var Cookie = []byte("mnp-tc/v1")

func (f *Filter) ours() bool { return !f.Foreign && bytes.Equal(f.Cookie, Cookie) }

// key identifies what a filter does, independently of its handle and of
// what the kernel reports back: two filters with the same key are
// interchangeable.
func (f *Filter) key() string {
	b := make([]byte, 0, 128)
	b = append(b, byte('0'+f.Hook), '|')
	b = strconv.AppendUint(b, uint64(f.Chain), 10)
	b = append(b, '|')
	b = strconv.AppendUint(b, uint64(f.Prio), 10)
	b = append(b, '|')
	b = strconv.AppendUint(b, uint64(f.Protocol), 16)
	b = append(b, '|')
	b = append(b, f.matchString()...)
	b = append(b, '|')
	for _, a := range f.Actions {
		b = append(b, byte('0'+a.Kind), ':')
		b = strconv.AppendUint(b, uint64(a.Chain), 10)
		b = append(b, ':')
		b = strconv.AppendUint(b, uint64(a.Zone), 10)
		if a.Commit {
			b = append(b, 'c')
		}
		b = append(b, ';')
	}
	b = append(b, '|')
	b = strconv.AppendUint(b, uint64(f.Flags), 10)
	return string(b)
}

// tpKey identifies the tcf_proto (chain, prio) the filter belongs to.
type tpKey struct {
	Hook  Hook
	Chain uint32
	Prio  uint16
}

func (f *Filter) tp() tpKey { return tpKey{f.Hook, f.Chain, f.Prio} }

// matchString renders the flower keys in tc syntax.
func (f *Filter) matchString() string {
	m := &f.Match
	var parts []string
	if m.DstMACMask != (MAC{}) {
		if m.DstMACMask == exactMAC {
			parts = append(parts, "dst_mac "+m.DstMAC.String())
		} else {
			parts = append(parts, "dst_mac "+m.DstMAC.String()+"/"+m.DstMACMask.String())
		}
	}
	if m.VLANEthType != 0 {
		parts = append(parts, "vlan_ethtype "+ethName(m.VLANEthType))
	}
	if m.IPProto != 0 {
		parts = append(parts, "ip_proto "+ipProtoName(m.IPProto))
	}
	if m.Src.IsValid() {
		parts = append(parts, "src_ip "+m.Src.String())
	}
	if m.Dst.IsValid() {
		parts = append(parts, "dst_ip "+m.Dst.String())
	}
	if m.DstPortMin != 0 {
		if m.DstPortMask != 0 {
			parts = append(parts, fmt.Sprintf("dst_port %d/0x%04x", m.DstPortMin, m.DstPortMask))
		} else if m.DstPortMin == m.DstPortMax {
			parts = append(parts, fmt.Sprintf("dst_port %d", m.DstPortMin))
		} else {
			parts = append(parts, fmt.Sprintf("dst_port %d-%d", m.DstPortMin, m.DstPortMax))
		}
	}
	if m.HasICMPType {
		parts = append(parts, fmt.Sprintf("type %d", m.ICMPType))
	}
	if m.CtStateMask != 0 {
		parts = append(parts, "ct_state "+ctStateString(m.CtState, m.CtStateMask))
	}
	return strings.Join(parts, " ")
}

// flagsString renders TCA_CLS_FLAGS_SKIP_* in tc syntax.
func flagsString(flags uint32) string {
	var s []string
	if flags&flagSkipHW != 0 {
		s = append(s, "skip_hw")
	}
	if flags&flagSkipSW != 0 {
		s = append(s, "skip_sw")
	}
	return strings.Join(s, " ")
}

// Flower flags (TCA_CLS_FLAGS_*).
const (
	flagSkipHW  uint32 = 1 << 0
	flagSkipSW  uint32 = 1 << 1
	flagInHW    uint32 = 1 << 2
	flagNotInHW uint32 = 1 << 3
)

// String renders the filter as one canonical line (handle included).
func (f *Filter) String() string {
	if f.Foreign {
		return fmt.Sprintf("%s chain %d pref %d protocol %s handle 0x%x %s (foreign)", f.Hook, f.Chain, f.Prio, ethName(f.Protocol), f.Handle, f.Kind)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s chain %d pref %d protocol %s handle 0x%x flower", f.Hook, f.Chain, f.Prio, ethName(f.Protocol), f.Handle)
	if fl := flagsString(f.Flags); fl != "" {
		b.WriteString(" " + fl)
	}
	if m := f.matchString(); m != "" {
		b.WriteString(" " + m)
	}
	for _, a := range f.Actions {
		b.WriteString(" action " + a.String())
	}
	return b.String()
}

// sortFilters orders filters as the kernel evaluates them: by hook, chain,
// prio, then handle.
func sortFilters(fs []*Filter) {
	sort.SliceStable(fs, func(i, j int) bool {
		a, b := fs[i], fs[j]
		if a.Hook != b.Hook {
			return a.Hook < b.Hook
		}
		if a.Chain != b.Chain {
			return a.Chain < b.Chain
		}
		if a.Prio != b.Prio {
			return a.Prio < b.Prio
		}
		return a.Handle < b.Handle
	})
}

// State is what is installed on one representor: its filters on both hooks.
type State struct {
	Dev     string
	Clsact  bool
	Filters []*Filter
}

// Canonical renders the state as stable text for golden files and logs:
// one filter per line in evaluation order.
func (s *State) Canonical() string {
	fs := append([]*Filter(nil), s.Filters...)
	sortFilters(fs)
	var b strings.Builder
	fmt.Fprintf(&b, "dev %s clsact=%v filters=%d\n", s.Dev, s.Clsact, len(fs))
	for _, f := range fs {
		b.WriteString(f.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// Ours returns the filters this driver installed.
func (s *State) Ours() []*Filter {
	var out []*Filter
	for _, f := range s.Filters {
		if f.ours() {
			out = append(out, f)
		}
	}
	return out
}

// InHWCount returns how many of our filters the kernel reports offloaded.
func (s *State) InHWCount() (inHW, total int) {
	for _, f := range s.Ours() {
		total++
		if f.InHW {
			inHW++
		}
	}
	return inHW, total
}

func cloneFilter(f *Filter) *Filter {
	c := *f
	c.Actions = append([]Action(nil), f.Actions...)
	c.Cookie = append([]byte(nil), f.Cookie...)
	return &c
}
