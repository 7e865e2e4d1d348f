package tcdriver

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// Reasons of the filters_not_in_hardware metric besides the profile's own
// (Profile.Offloads): a mismatch between the read back and what the
// placement expects, either way, or the mode.
const (
	// reasonNotOffloaded: a filter the placement expects in hardware has
	// fewer hardware copies than expected (in_hw_count 0): the device did
	// not take it.
	reasonNotOffloaded = "not offloaded by the device"
	// reasonUnexpectedInHW: a filter the placement keeps in software is in
	// hardware: the device matches more than the offload profile says, and
	// may decide what the profile's software path would decide otherwise.
	reasonUnexpectedInHW = "in hardware, expected in software (--offload-profile does not describe the device)"
	// reasonExtraCopies: more hardware copies than the one per port the
	// placement installs (a shared block, or a LAG offloading to both
	// ports).
	reasonExtraCopies = "more hardware copies than expected (in_hw_count above 1)"
	// reasonSoftwareMode: --tc-offload=software puts every filter skip_hw.
	reasonSoftwareMode = "--tc-offload=software"
)

// hwCheck is what one read back of a device's in_hw found.
type hwCheck struct {
	// missing are the filters the placement expects in hardware with
	// fewer copies there.
	missing []*Filter
	// reasons counts every filter not in hardware as expected, or kept in
	// software by design, by reason (reasonNotOffloaded always present).
	reasons map[string]int
	// entries are the device's filters that lead to sections (chain 0
	// and dispatch entries), to attribute a missing filter to a pod.
	entries []*Filter
}

// checkInHW compares, filter by filter, the in_hw_count the kernel reports
// with what the placement expects (expectedInHW).
func (o Options) checkInHW(st *State) *hwCheck {
	c := &hwCheck{reasons: map[string]int{reasonNotOffloaded: 0}}
	for _, f := range st.Ours() {
		if f.Chain == 0 || o.owns(f.Chain) && f.Chain-o.slotBase(o.slotOf(f.Chain)) == chainDispatch && f.Prio == prioDispatchEntry {
			c.entries = append(c.entries, f)
		}
		want, why := o.expectedInHW(f)
		got := f.InHWCount
		if got == 0 && f.InHW {
			got = 1 // a kernel without in_hw_count: in hardware somewhere
		}
		switch {
		case got < want:
			c.missing = append(c.missing, f)
			c.reasons[reasonNotOffloaded]++
		case want == 0 && got > 0:
			c.reasons[reasonUnexpectedInHW]++
		case got > want:
			c.reasons[reasonExtraCopies]++
		case want == 0:
			c.reasons[why]++
		}
	}
	return c
}

// NotInHardware compares what the kernel reports in hardware (in_hw_count)
// with what the placement expects per filter: one copy (its own port's)
// for a filter the profile offloads, none for one it keeps in software. It
// returns how many expected filters are missing from hardware, and every
// filter not in hardware as expected counted by reason: the profile's (by
// design), reasonNotOffloaded, or a filter in hardware that should not be.
func NotInHardware(st *State, prof Profile) (missing int, reasons map[string]int) {
	c := Options{Profile: prof}.withDefaults().checkInHW(st)
	return len(c.missing), c.reasons
}

// reportOffload reads back in_hw of our filters, reports it in the debug
// log and the metrics, and keeps it for --tc-offload=required.
func (r *reconciler) reportOffload(dev string) *hwCheck {
	st, err := r.Dump(context.Background(), dev)
	if err != nil {
		r.log.WithError(err).WithField("representor", dev).Warn("reading back in_hw")
		return nil
	}
	perHook := map[Hook][2]int{}
	for _, f := range st.Ours() {
		c := perHook[f.Hook]
		c[1]++
		if f.InHW {
			c[0]++
		}
		perHook[f.Hook] = c
	}
	for _, h := range Hooks {
		c := perHook[h]
		r.log.WithFields(logrus.Fields{"representor": dev, "hook": h.String(), "filters": c[1], "in_hw": c[0], "offload": r.opts.Offload}).Debug("tc filters programmed")
		if r.metrics != nil {
			r.metrics.set(dev, h, c[0], c[1])
		}
	}
	chk := r.opts.checkInHW(st)
	if r.metrics != nil {
		r.metrics.setNotInHW(dev, chk.reasons)
	}
	r.bridgesMu.Lock()
	prev := r.hw[dev]
	if r.hw == nil {
		r.hw = map[string]*hwCheck{}
	}
	r.hw[dev] = chk
	r.bridgesMu.Unlock()
	fields := logrus.Fields{"representor": dev, "profile": r.opts.Profile.withDefault().Name, "offload": r.opts.Offload}
	if n := len(chk.missing); n > 0 && (prev == nil || len(prev.missing) == 0) {
		effect := "software decides what they decide (slow path)"
		if r.opts.Offload == OffloadRequired {
			effect = "--tc-offload=required closes the pods they decide for"
		}
		r.log.WithFields(fields).WithField("filters", n).WithField("example", chk.missing[0].String()).Warn(
			"filters the offload profile puts in hardware are not in hardware (in_hw_count 0): the device did not offload them, so " + effect + "; " + offloadFix)
	}
	if n := chk.reasons[reasonUnexpectedInHW]; n > 0 && (prev == nil || prev.reasons[reasonUnexpectedInHW] == 0) {
		r.log.WithFields(fields).WithField("filters", n).Warn(
			"filters the offload profile keeps in software are in hardware: the device matches more than the profile says; set --offload-profile to the NIC's")
	}
	return chk
}

// offloadFix is what an operator checks when filters are not offloaded.
const offloadFix = "fix: check `ethtool -k DEV hw-tc-offload` (on, for the representor and the uplink), the eswitch mode (`devlink dev eswitch show pci/PF`: switchdev) and that --offload-profile describes the NIC"

// lastCheck is the device's last read back, made now if there is none (a
// device the driver did not change since it started).
func (r *reconciler) lastCheck(dev string) *hwCheck {
	r.bridgesMu.Lock()
	c := r.hw[dev]
	r.bridgesMu.Unlock()
	if c != nil {
		return c
	}
	return r.reportOffload(dev)
}

// reoffload offers the filters chk found missing from hardware to it
// again, each replaced by itself (one atomic request, same match and
// actions: no verdict changes), and reads in_hw back. A filter is offloaded
// when it is added: one installed while the device could not take it (its
// hw-tc-offload off, a driver reloading) stays in software after the
// device is fixed until it is added again, and a filter that no change
// touches (an uplink's shared filters) would keep its pods refused.
func (r *reconciler) reoffload(dev string, chk *hwCheck) *hwCheck {
	if chk == nil || len(chk.missing) == 0 {
		return chk
	}
	for _, f := range chk.missing {
		r.stats.Replaces++
		if err := r.k.replace(dev, f); err != nil {
			r.log.WithError(err).WithField("representor", dev).Warn("offering a filter to the hardware again")
			break
		}
	}
	if again := r.reportOffload(dev); again != nil {
		return again
	}
	return chk
}

func (r *reconciler) forgetCheck(dev string) {
	r.bridgesMu.Lock()
	defer r.bridgesMu.Unlock()
	delete(r.hw, dev)
	delete(r.hwRefused, dev)
}

// wasRefused reports whether --tc-offload=required closed the port at its
// last apply. Such a port is closed again first, and takes its rules only
// once its device holds its closed filters in hardware: a device that still
// cannot offload never sees the pod's rules run in software again.
func (r *reconciler) wasRefused(dev string) bool {
	r.bridgesMu.Lock()
	defer r.bridgesMu.Unlock()
	return r.hwRefused[dev]
}

func (r *reconciler) setRefused(dev string, refused bool) {
	r.bridgesMu.Lock()
	defer r.bridgesMu.Unlock()
	if r.hwRefused == nil {
		r.hwRefused = map[string]bool{}
	}
	if refused {
		r.hwRefused[dev] = true
	} else {
		delete(r.hwRefused, dev)
	}
}

// NotInHardwareError is a port --tc-offload=required refused: filters that
// decide its pod's traffic, which the placement expects in hardware, are
// not there after the change. The driver closed the port (isolated both
// ways, in software); it is retried by the next apply.
type NotInHardwareError struct {
	// Dev is the refused port: the pod's VF representor.
	Dev string
	// Pod (namespace/name) and Network of the attachment refused.
	Pod, Network string
	// Missing is how many of the filters deciding for the pod are not in
	// hardware, Reasons counts them by reason, and On by the device they
	// are on (its own representor, or a port carrying its ingress).
	Missing int
	Reasons map[string]int
	On      map[string]int
	// Example is one of them, as the driver renders a filter.
	Example string
}

func (e *NotInHardwareError) Error() string {
	who := "representor " + e.Dev
	if e.Pod != "" {
		who = fmt.Sprintf("pod %s network %s representor %s", e.Pod, e.Network, e.Dev)
	}
	return who + ": " + e.Detail()
}

// Detail is the error without the port and pod it names: what is not in
// hardware, where, what the driver did and the fix.
func (e *NotInHardwareError) Detail() string {
	var reasons, on []string
	for why, n := range e.Reasons {
		reasons = append(reasons, fmt.Sprintf("%d %s", n, why))
	}
	for dev, n := range e.On {
		on = append(on, fmt.Sprintf("%s: %d", dev, n))
	}
	sort.Strings(reasons)
	sort.Strings(on)
	return fmt.Sprintf("not in hardware: %d filters expected in hardware (%s; on %s; e.g. %s), and --tc-offload=required: closed until they are; %s; or run --tc-offload=auto to enforce such pods in software (slow path)",
		e.Missing, strings.Join(reasons, ", "), strings.Join(on, ", "), e.Example, offloadFix)
}

// newNotInHW starts the error of a refused port.
func newNotInHW(dev string, att policy.Attachment) *NotInHardwareError {
	e := &NotInHardwareError{Dev: dev, Reasons: map[string]int{}, On: map[string]int{}}
	if att.PodName != "" {
		e.Pod, e.Network = att.PodNamespace+"/"+att.PodName, att.Network.String()
	}
	return e
}

func (e *NotInHardwareError) add(dev string, f *Filter) {
	if e.Missing == 0 {
		e.Example = fmt.Sprintf("%s %s", dev, f)
	}
	e.Missing++
	e.Reasons[reasonNotOffloaded]++
	e.On[dev]++
}

// closedLike reports whether rs allows no connection either way (ICMP
// the flags accept aside): refusing it would install the same, so
// --tc-offload=required leaves it as it is.
func closedLike(rs *policy.RuleSet) bool {
	for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
		if dr := rs.Direction(d); !dr.Isolated || len(dr.Rules) > 0 {
			return false
		}
	}
	return true
}

// closedRuleSet isolates an attachment both ways (its ingress only when
// it can be dispatched to: hasMAC, on a bridge).
func closedRuleSet(att policy.Attachment, hasMAC bool) *policy.RuleSet {
	closed := &policy.RuleSet{Attachment: att, Egress: policy.DirectionRules{Isolated: true, Stateful: true}}
	if hasMAC {
		closed.Ingress = closed.Egress
	}
	return closed
}

// requiredRefusal is, with --tc-offload=required, the error of a
// representor programmed alone whose expected filters are not all in
// hardware (nil: nothing to refuse).
func (r *reconciler) requiredRefusal(dev string, rs *policy.RuleSet, chk *hwCheck) *NotInHardwareError {
	if r.opts.Offload != OffloadRequired || closedLike(rs) {
		return nil
	}
	return r.notInHWOn(dev, rs.Attachment, chk)
}

// notInHWOn is the error of a representor programmed alone for att when
// its filters expected in hardware are not all there, after offering the
// missing ones again (nil: they are all there).
func (r *reconciler) notInHWOn(dev string, att policy.Attachment, chk *hwCheck) *NotInHardwareError {
	if chk == nil {
		chk = r.lastCheck(dev)
	}
	if chk = r.reoffload(dev, chk); chk == nil || len(chk.missing) == 0 {
		return nil
	}
	e := newNotInHW(dev, att)
	for _, f := range chk.missing {
		e.add(dev, f)
	}
	return e
}

// offloadRefusals returns, with --tc-offload=required, the pods' ports of
// b to close because filters deciding their traffic are expected in
// hardware and are not there: on the pod's own port (its egress, and what
// that port decides), and on every other port the section dispatched on
// its MAC (its ingress from there). A filter of no single pod (an uplink's
// group and catch-all filters) counts for every pod on the bridge. Ports in
// skip (refused already, or whose apply failed) and ports whose rule set
// allows nothing are not refused, but for the ports in probe (closed to see
// whether their device takes their filters now); devices in skip are not
// read.
func (r *reconciler) offloadRefusals(b *Bridge, skip, probe map[string]bool) map[string]*NotInHardwareError {
	if r.opts.Offload != OffloadRequired {
		return nil
	}
	byMAC := map[MAC]string{}
	pods := map[string]*BridgePort{}
	for i := range b.Ports {
		pt := &b.Ports[i]
		pods[pt.Dev] = pt
		if m, ok := MACOf(pt.MAC); ok {
			byMAC[m] = pt.Dev
		}
	}
	out := map[string]*NotInHardwareError{}
	blame := func(pod, dev string, f *Filter) {
		pt := pods[pod]
		if pt == nil || skip[pod] || closedLike(pt.RuleSet) && !probe[pod] {
			return
		}
		if out[pod] == nil {
			out[pod] = newNotInHW(pod, pt.RuleSet.Attachment)
		}
		out[pod].add(dev, f)
	}
	for _, dev := range portOrder(b) {
		if skip[dev] {
			continue
		}
		chk := r.reoffload(dev, r.lastCheck(dev))
		if chk == nil || len(chk.missing) == 0 {
			continue
		}
		_, isPod := pods[dev]
		for _, f := range chk.missing {
			switch to, mac := r.sectionOwner(chk, f); {
			case to == ownerReceiver && byMAC[mac] != "":
				blame(byMAC[mac], dev, f)
			case to == ownerSelf && isPod, to == ownerShared && isPod:
				blame(dev, dev, f)
			default: // the uplink's shared filters, or a section of no known pod
				for pod := range pods {
					blame(pod, dev, f)
				}
			}
		}
	}
	return out
}

type sectionOwnerKind uint8

const (
	ownerShared   sectionOwnerKind = iota // dispatch, group filters
	ownerSelf                             // the port's own pod's sender section
	ownerReceiver                         // a receiver's section (by MAC)
)

// sectionOwner says whose section a filter of a bridge port is in.
func (r *reconciler) sectionOwner(chk *hwCheck, f *Filter) (sectionOwnerKind, MAC) {
	target := f.Chain
	if f.Chain == 0 || f.Chain-r.opts.slotBase(r.opts.slotOf(f.Chain)) == chainDispatch && f.Prio == prioDispatchEntry {
		// An entry: whose is where it goes.
		if f.Match.DstMACMask == exactMAC {
			return ownerReceiver, f.Match.DstMAC
		}
		if len(f.Actions) != 1 || f.Actions[0].Kind != ActGoto || !r.opts.owns(f.Actions[0].Chain) {
			return ownerShared, MAC{}
		}
		target = f.Actions[0].Chain
		if f.Match.DstMACMask != (MAC{}) {
			return ownerShared, MAC{} // the group entry
		}
	}
	if !r.opts.owns(target) {
		return ownerShared, MAC{}
	}
	base := r.opts.slotBase(r.opts.slotOf(target))
	rel := target - base
	switch {
	case rel < chainDispatch:
		return ownerSelf, MAC{}
	case rel < chainReceivers:
		return ownerShared, MAC{}
	}
	start := base + sectionOf(rel)
	for _, e := range chk.entries {
		if len(e.Actions) == 1 && e.Actions[0].Kind == ActGoto && e.Actions[0].Chain == start && e.Match.DstMACMask == exactMAC {
			return ownerReceiver, e.Match.DstMAC
		}
	}
	return ownerShared, MAC{}
}
