// Package policy is the pure core of multi-networkpolicy-tc: from
// MultiNetworkPolicies, Pods, Namespaces and NetworkAttachmentDefinitions it
// computes, for each local pod attachment, an ordered and TC-independent rule
// set per direction. It performs no I/O and talks to no Kubernetes client, so
// every semantic can be tested in isolation and checked against the reference
// evaluator in reference.go.
package policy

import (
	"fmt"
	"net/netip"
	"strings"
)

// NetworkRef names a NetworkAttachmentDefinition as namespace/name.
type NetworkRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

func (n NetworkRef) String() string { return n.Namespace + "/" + n.Name }

// ParseNetworkRef parses "ns/name", or "name" relative to defaultNamespace.
func ParseNetworkRef(s, defaultNamespace string) (NetworkRef, error) {
	s = strings.TrimSpace(s)
	ns, name, found := strings.Cut(s, "/")
	if !found {
		ns, name = defaultNamespace, s
	}
	if ns == "" || name == "" || strings.Contains(name, "/") {
		return NetworkRef{}, fmt.Errorf("%q is not a network name (want name or namespace/name)", s)
	}
	return NetworkRef{Namespace: ns, Name: name}, nil
}

// Attachment is one local pod network interface to enforce: a pod attached to
// a network through an interface. Key is opaque to the policy core; the
// agent fills it with what locates the datapath (VF PCI address and
// representor) and the TC driver uses it to find the port.
type Attachment struct {
	PodNamespace string     `json:"podNamespace"`
	PodName      string     `json:"podName"`
	Network      NetworkRef `json:"network"`
	Interface    string     `json:"interface"`
	Key          string     `json:"key,omitempty"`
}

// ID identifies the attachment independently of where it is enforced.
func (a Attachment) ID() string {
	return a.PodNamespace + "/" + a.PodName + "/" + a.Network.String()
}

// String reads "ns/pod net1 (network ns/nad)".
func (a Attachment) String() string {
	s := a.PodNamespace + "/" + a.PodName
	if a.Interface != "" {
		s += " " + a.Interface
	}
	return s + " (network " + a.Network.String() + ")"
}

// Direction is the pod's point of view: Ingress is traffic delivered to the
// pod, Egress is traffic the pod sends.
type Direction int

const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Protocol is an L4 protocol a port rule can match.
type Protocol string

const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
	// ICMP and ICMPv6 never appear in a PortMatch; packets of these
	// protocols match only rules without ports, or the echo switches.
	ICMP   Protocol = "ICMP"
	ICMPv6 Protocol = "ICMPv6"
)

// ParseProtocol reads a protocol name as a user spells it (tcp, UDP,
// icmpv6, ...).
func ParseProtocol(s string) (Protocol, bool) {
	for _, p := range []Protocol{TCP, UDP, SCTP, ICMP, ICMPv6} {
		if strings.EqualFold(s, string(p)) {
			return p, true
		}
	}
	return "", false
}

// IPProto returns the IANA protocol number.
func (p Protocol) IPProto() uint8 {
	switch p {
	case TCP:
		return 6
	case UDP:
		return 17
	case SCTP:
		return 132
	}
	return 0
}

// PortMatch matches the destination port of new connections. Port == 0
// means every port of Protocol; otherwise the inclusive range
// [Port, EndPort] with EndPort >= Port (EndPort == Port for a single port).
type PortMatch struct {
	Protocol Protocol `json:"protocol"`
	Port     uint16   `json:"port,omitempty"`
	EndPort  uint16   `json:"endPort,omitempty"`
}

// AllPorts reports whether the match covers every port of its protocol.
func (p PortMatch) AllPorts() bool { return p.Port == 0 }

// Contains reports whether a packet of protocol proto to port matches.
func (p PortMatch) Contains(proto Protocol, port uint16) bool {
	if proto != p.Protocol {
		return false
	}
	return p.AllPorts() || (port >= p.Port && port <= p.EndPort)
}

func (p PortMatch) String() string {
	switch {
	case p.AllPorts():
		return strings.ToLower(string(p.Protocol))
	case p.Port == p.EndPort:
		return fmt.Sprintf("%s/%d", strings.ToLower(string(p.Protocol)), p.Port)
	default:
		return fmt.Sprintf("%s/%d-%d", strings.ToLower(string(p.Protocol)), p.Port, p.EndPort)
	}
}

// Rule allows new connections whose remote address is in Peers and whose
// destination matches one of Ports. Rule sets are read-only: their slices
// may be shared with the engine's caches and with other rule sets.
//
// AnyPeer means every IPv4 and IPv6 address; otherwise Peers is a set of
// disjoint, aggregated prefixes (never empty: a rule that would allow no
// peer is dropped). Empty Ports means every protocol and port; otherwise it is
// a non-empty list (a rule whose ports all failed to resolve is dropped, never
// widened to all ports).
type Rule struct {
	AnyPeer bool           `json:"anyPeer,omitempty"`
	Peers   []netip.Prefix `json:"peers,omitempty"`
	Ports   []PortMatch    `json:"ports,omitempty"`
	// Origins names the policy rules this rule was derived from, e.g.
	// "ns/name ingress[0]", for troubleshooting.
	Origins []string `json:"origins"`
}

// MatchesPeer reports whether addr is one of the rule's peers.
func (r *Rule) MatchesPeer(addr netip.Addr) bool {
	if r.AnyPeer {
		return true
	}
	for _, p := range r.Peers {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// MatchesPort reports whether the destination protocol/port is allowed.
func (r *Rule) MatchesPort(proto Protocol, port uint16) bool {
	if len(r.Ports) == 0 {
		return true
	}
	for _, p := range r.Ports {
		if p.Contains(proto, port) {
			return true
		}
	}
	return false
}

// DirectionRules is the policy of one direction of one attachment.
//
// When Isolated is false nothing is enforced: every packet passes and the
// datapath installs no filter. When Isolated is true:
//   - ARP and IPv6 neighbour discovery (ICMPv6 133-136) always pass;
//   - new ICMP (any type) passes when AcceptICMP, ICMPv6 when AcceptICMPv6;
//   - packets of established or related connections pass (Stateful: replies
//     to connections allowed in either direction are never dropped);
//   - a new IP connection passes when any Rule allows it (rules are a
//     union; their order carries no meaning beyond a stable rendering);
//   - everything else is dropped.
type DirectionRules struct {
	Isolated     bool   `json:"isolated"`
	Stateful     bool   `json:"stateful"`
	AcceptICMP   bool   `json:"acceptICMP,omitempty"`
	AcceptICMPv6 bool   `json:"acceptICMPv6,omitempty"`
	Rules        []Rule `json:"rules,omitempty"`
	// Policies lists the policies (ns/name) that isolate this direction.
	Policies []string `json:"policies,omitempty"`
}

// RuleSet is everything the datapath needs to enforce one attachment.
type RuleSet struct {
	Attachment Attachment     `json:"attachment"`
	Ingress    DirectionRules `json:"ingress"`
	Egress     DirectionRules `json:"egress"`
}

// Direction returns the rules of direction d.
func (rs *RuleSet) Direction(d Direction) *DirectionRules {
	if d == Egress {
		return &rs.Egress
	}
	return &rs.Ingress
}

// Packet is the first packet of a connection as seen from the attachment's
// pod: for Ingress, Remote is the source and Port the pod's local
// destination port; for Egress, Remote is the destination and Port its port.
type Packet struct {
	Direction Direction
	Remote    netip.Addr
	Protocol  Protocol
	Port      uint16
}

// Allows evaluates a new connection against the computed rule set: the
// semantics the datapath must implement, used by tests to compare the rule
// set with the reference evaluator and with real traffic.
func (rs *RuleSet) Allows(p Packet) bool {
	d := rs.Direction(p.Direction)
	if !d.Isolated {
		return true
	}
	for i := range d.Rules {
		if d.Rules[i].MatchesPeer(p.Remote) && d.Rules[i].MatchesPort(p.Protocol, p.Port) {
			return true
		}
	}
	// The pipeline accepts every new ICMP packet when the switch is on.
	return (p.Protocol == ICMP && d.AcceptICMP) || (p.Protocol == ICMPv6 && d.AcceptICMPv6)
}
