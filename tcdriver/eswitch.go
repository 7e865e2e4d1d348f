package tcdriver

import (
	"fmt"
	"strings"
)

// The eswitch model: the tracer run over a whole bridge the way an mlx5
// eswitch with bridge offload runs frames (facts and sources in
// docs/tc-rule-pipeline.md and issue 11). In hardware, only the TC filters
// of the port a frame enters by run, only those the profile offloads, and
// a frame they pass is switched to its destination vport without ever
// reaching the destination representor's egress hook. A frame hardware
// cannot decide goes to the kernel (the slow path): the source port's whole
// software pipeline, then the software bridge, which sends it out of the
// destination representor, across that port's egress hook.

// EswitchMode is how the model runs a frame.
type EswitchMode int

const (
	// EswitchSoftware is a software bridge (the kernel bed, veths): the
	// source port's ingress hook, then the destination port's egress hook,
	// every filter in software.
	EswitchSoftware EswitchMode = iota
	// EswitchHardware is mlx5 with bridge offload: the offloaded filters of
	// the source port's ingress hook; a hardware ct action consults the
	// hardware CT table; a CT miss or a chain miss goes to software (the
	// source port's whole software pipeline, then the destination's egress
	// hook, as in EswitchSoftware). With a profile that offloads nothing
	// (software) every frame takes the slow path.
	EswitchHardware
	// EswitchHardwarePessimistic is EswitchHardware where a hardware CT
	// miss continues to the hardware bridge instead of software: the
	// frame is forwarded with no software verdict (the hazard read in the
	// mlx5 sources, not confirmed on a NIC: a CT-table miss continues
	// through TC_MISS then BR_OFFLOAD before the slow path).
	EswitchHardwarePessimistic
)

func (m EswitchMode) String() string {
	return [...]string{"software", "hardware", "hardware-pessimistic"}[m]
}

// Decider is where the model decided a frame.
type Decider int

const (
	// DecidedHardware: the offloaded filters of the source port decided.
	DecidedHardware Decider = iota
	// DecidedSoftware: the software pipelines decided (EswitchSoftware, or
	// a frame that missed to software).
	DecidedSoftware
	// DecidedCtMissBridge: a hardware CT miss forwarded the frame with no
	// verdict (EswitchHardwarePessimistic).
	DecidedCtMissBridge
)

func (d Decider) String() string {
	return [...]string{"hardware", "software", "hardware ct miss → bridge"}[d]
}

// EswitchPort is one port of the modelled bridge: the filters of its
// representor's hooks.
type EswitchPort struct {
	Ingress, Egress []*Filter
	offloaded       []*Filter
}

// Eswitch is one bridge of an mlx5 eswitch: its ports, its MAC table, the
// kernel's conntrack and, derived from it, the hardware CT table.
type Eswitch struct {
	Profile Profile
	Ports   map[string]*EswitchPort
	// MACs is the bridge's learned FDB: the port each destination MAC is
	// behind (remote MACs are behind the uplink). Flooding (group or
	// unknown destinations) is not modelled.
	MACs map[MAC]string
	// CT is the kernel's conntrack, which every software ct action uses.
	CT *Conntrack
}

// NewEswitch reads the filters of both hooks of every dev from a Fake.
func NewEswitch(f *Fake, prof Profile, macs map[MAC]string, devs ...string) *Eswitch {
	e := &Eswitch{Profile: prof.withDefault(), Ports: map[string]*EswitchPort{}, MACs: macs, CT: NewConntrack()}
	for _, d := range devs {
		p := &EswitchPort{Ingress: f.Filters(d, HookIngress), Egress: f.Filters(d, HookEgress)}
		p.offloaded = e.Profile.Offloaded(p.Ingress)
		e.Ports[d] = p
	}
	return e
}

// EswitchResult is what happened to one frame.
type EswitchResult struct {
	Delivered bool
	// To is the destination port.
	To string
	By Decider
	// Miss says why a frame went to software (By is DecidedSoftware in a
	// hardware mode) or was bridged on a CT miss.
	Miss string
	// Steps are the hooks the frame crossed, with their trace.
	Steps []string
	// HardwareHits are the offloaded filters the frame matched in
	// hardware, in order.
	HardwareHits []*Filter
}

func (r EswitchResult) String() string {
	v := "dropped"
	if r.Delivered {
		v = "delivered to " + r.To
	}
	s := fmt.Sprintf("%s (%s", v, r.By)
	if r.Miss != "" {
		s += ": " + r.Miss
	}
	return s + ") via " + strings.Join(r.Steps, "; ")
}

// Send runs a frame entering the bridge by port in. Its destination is the
// port its DstMAC is behind.
func (e *Eswitch) Send(mode EswitchMode, in string, p Packet) (EswitchResult, error) {
	src := e.Ports[in]
	to, known := e.MACs[p.DstMAC]
	if src == nil {
		return EswitchResult{}, fmt.Errorf("eswitch: no port %s", in)
	}
	if !known || e.Ports[to] == nil || to == in {
		return EswitchResult{}, fmt.Errorf("eswitch: frame from %s to MAC %s: no other port has it (flooding is not modelled)", in, p.DstMAC)
	}
	res := EswitchResult{To: to}
	if mode == EswitchSoftware || !e.Profile.Hardware {
		// A target that offloads nothing runs everything in software.
		res.By = DecidedSoftware
		return e.software(res, in, p), nil
	}
	hw, miss := trace(src.offloaded, HookIngress, p, hardwareCT{e.CT}, true)
	res.Steps = append(res.Steps, fmt.Sprintf("%s ingress (hardware): %s", in, hw))
	res.HardwareHits = hw.Hits
	switch {
	case miss == nil:
		// Decided in hardware; a frame that passes is switched to its
		// vport and never crosses the destination's egress hook.
		res.By, res.Delivered = DecidedHardware, hw.Verdict == Pass
		return res, nil
	case miss.ct && mode == EswitchHardwarePessimistic:
		res.By, res.Delivered, res.Miss = DecidedCtMissBridge, true, e.ctMissReason(p)
		return res, nil
	case miss.ct:
		res.Miss = e.ctMissReason(p)
	default:
		res.Miss = e.chainMissReason(src, miss.chain)
	}
	res.By = DecidedSoftware
	return e.software(res, in, p), nil
}

// software is the slow path: the source port's ingress hook, then the
// software bridge out of the destination port, across its egress hook.
func (e *Eswitch) software(res EswitchResult, in string, p Packet) EswitchResult {
	r := Trace(e.Ports[in].Ingress, HookIngress, p, e.CT)
	res.Steps = append(res.Steps, fmt.Sprintf("%s ingress: %s", in, r))
	if r.Verdict == Drop {
		return res
	}
	r = Trace(e.Ports[res.To].Egress, HookEgress, p, e.CT)
	res.Steps = append(res.Steps, fmt.Sprintf("%s egress: %s", res.To, r))
	res.Delivered = r.Verdict == Pass
	return res
}

func (e *Eswitch) ctMissReason(p Packet) string {
	switch {
	case p.IPProto != ProtoTCP && p.IPProto != ProtoUDP:
		return "ct miss: " + ipProtoName(p.IPProto) + " is never offloaded"
	case e.CT.known(p):
		return "ct miss: connection not established yet"
	}
	return "ct miss: new connection"
}

// chainMissReason names the first filter the profile refuses in the chain
// that missed: the construct that keeps the chain in software.
func (e *Eswitch) chainMissReason(port *EswitchPort, chain uint32) string {
	fs := append([]*Filter(nil), port.Ingress...)
	sortFilters(fs)
	for _, f := range fs {
		if f.Chain == chain {
			if why := e.Profile.refuses(f); why != "" {
				return "chain miss: " + why
			}
		}
	}
	return fmt.Sprintf("chain miss: no offloaded filter of chain %d matches", chain)
}

// hardwareCT is mlx5's CT table: it holds the connections act_ct pushed to
// hardware, which are TCP connections once established and UDP ones once
// confirmed with a reply seen (the model does not track TCP flags: both
// are "a reply was seen"), never ICMP, ICMPv6 or SCTP. A hit gives
// +trk+est (+rpl for the reply direction); a ct commit is a lookup only
// (mlx5 commits in software); anything else misses.
type hardwareCT struct{ sw *Conntrack }

func (h hardwareCT) act(a Action, p *Packet) (uint16, bool) {
	if p.IPProto != ProtoTCP && p.IPProto != ProtoUDP {
		return 0, false
	}
	orig, reply := p.ctKeys(a.Zone)
	if e := h.sw.entries[orig]; e != nil && e.seenReply {
		return CtTracked | CtEstablished, true
	}
	if e := h.sw.entries[reply]; e != nil && e.seenReply {
		return CtTracked | CtEstablished | CtReply, true
	}
	return 0, false
}

// known reports whether the kernel's conntrack has an entry for p's
// connection in some zone.
func (c *Conntrack) known(p Packet) bool {
	for k := range c.entries {
		o, r := p.ctKeys(k.zone)
		if k == o || k == r {
			return true
		}
	}
	return false
}
