package tcdriver

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Profile is what one offload target matches in hardware. The compiler
// consults it so that every construct the target cannot match takes a path
// that stays correct in hardware: the filter is installed skip_hw, and so is
// every filter after it in its chain, so that the chain's hardware lookup
// misses and the packet continues in software at that chain (mlx5 restores
// the chain of a miss, see docs/tc-rule-pipeline.md "Capability profiles").
// Nothing is ever silently absent in hardware while a later filter decides.
type Profile struct {
	// Name is the --offload-profile value.
	Name string
	// Hardware is false for the software profile: no filter is offloaded
	// and the compiler adds no skip_hw.
	Hardware bool
	// PortRanges: flower dst_port MIN-MAX is offloaded. Without it, ranges
	// are compiled into masked ports.
	PortRanges bool
	// SCTPPorts: ports are matched with ip_proto sctp.
	SCTPPorts bool
	// ICMPType: ICMP/ICMPv6 type and code are matched (mlx5: firmware flex
	// parser).
	ICMPType bool
	// CtNew: ct_state +new is matched.
	CtNew bool
	// CtRelInv: ct_state +rel and +inv are matched.
	CtRelInv bool
}

// The profiles. Facts from /work/shared/reference/mlx5-offload.md (mlx5
// driver sources of Linux 6.1 and 6.12): __parse_cls_flower has no
// PORTS_RANGE key; "Only UDP and TCP transports are supported for L4
// matching"; ICMP type needs FLEX_PARSER_PROFILE_ENABLE=2, which we do not
// assume; mlx5_tc_ct_match_add refuses +rel and +inv, and +new before 6.3.
var (
	ProfileSoftware = Profile{Name: "software", PortRanges: true, SCTPPorts: true, ICMPType: true, CtNew: true, CtRelInv: true}
	ProfileMLX561   = Profile{Name: "mlx5-6.1", Hardware: true}
	ProfileMLX563   = Profile{Name: "mlx5-6.3", Hardware: true, CtNew: true}
)

// Profiles lists the profiles by name, for flags and tests.
var Profiles = []Profile{ProfileSoftware, ProfileMLX561, ProfileMLX563}

// ProfileAuto is the --offload-profile value that picks the profile from
// the running kernel's version.
const ProfileAuto = "auto"

// ParseProfile parses --offload-profile; kernelRelease (uname -r) decides
// "auto".
func ParseProfile(s, kernelRelease string) (Profile, error) {
	if s == ProfileAuto || s == "" {
		return ProfileForKernel(kernelRelease), nil
	}
	for _, p := range Profiles {
		if p.Name == s {
			return p, nil
		}
	}
	return Profile{}, fmt.Errorf("--offload-profile=%q: want auto, software, mlx5-6.1 or mlx5-6.3", s)
}

// ProfileForKernel is the mlx5 profile of a kernel release ("6.1.0-13-amd64"):
// mlx5-6.3 from 6.3 on, mlx5-6.1 before and when the release cannot be read
// (the stricter profile compiles pipelines that are correct on both).
func ProfileForKernel(release string) Profile {
	major, minor, ok := kernelVersion(release)
	if ok && (major > 6 || major == 6 && minor >= 3) {
		return ProfileMLX563
	}
	return ProfileMLX561
}

// RunningKernelRelease is uname -r of the running kernel, "" when unknown.
func RunningKernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func kernelVersion(release string) (major, minor int, ok bool) {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minorDigits := strings.TrimRightFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' })
	minor, err2 := strconv.Atoi(minorDigits)
	return major, minor, err1 == nil && err2 == nil
}

func (p Profile) withDefault() Profile {
	if p.Name == "" {
		return ProfileSoftware
	}
	return p
}

// refuses returns why the profile cannot match f in hardware, or "".
func (p Profile) refuses(f *Filter) string {
	m := &f.Match
	switch {
	case m.DstPortMin != 0 && m.DstPortMin != m.DstPortMax && !p.PortRanges:
		return "dst_port range (offloaded as masked ports only)"
	case m.DstPortMin != 0 && m.IPProto == ProtoSCTP && !p.SCTPPorts:
		return "sctp ports (only tcp and udp ports are matched)"
	case m.HasICMPType && !p.ICMPType:
		return "icmp type (needs the firmware flex parser)"
	case m.CtStateMask&m.CtState&CtNew != 0 && !p.CtNew:
		return "ct_state +new (matched from Linux 6.3)"
	case m.CtStateMask&m.CtState&(CtRelated|CtInvalid) != 0 && !p.CtRelInv:
		return "ct_state +rel/+inv (refused)"
	}
	return ""
}

// Offloads says whether the profile's target runs f in hardware, and why
// not. A skip_hw filter the profile could match is software-only because a
// filter before it in its chain is (so the chain's hardware miss reaches
// software), or because every filter is (--tc-offload=software).
func (p Profile) Offloads(f *Filter) (bool, string) {
	p = p.withDefault()
	switch {
	case !p.Hardware:
		return false, "software profile"
	case f.Foreign:
		return false, "foreign filter"
	case f.Hook == HookEgress:
		// en/rep/tc.c binds flow blocks of the clsact ingress hook only.
		return false, "representor egress hook (mlx5 offloads the ingress hook only)"
	}
	if r := p.refuses(f); r != "" {
		return false, r
	}
	if f.Flags&flagSkipHW != 0 {
		return false, "skip_hw (decided in software: after a software-only filter of its chain, so that the chain misses to software; or past a representor's sender section, which mlx5 leaves only for connections its CT table does not hold; or --tc-offload=software)"
	}
	return true, ""
}

// OffloadMark renders Offloads as the comment render and explain print.
func (p Profile) OffloadMark(f *Filter) string {
	p = p.withDefault()
	if ok, why := p.Offloads(f); !ok {
		return fmt.Sprintf("sw: %s", why)
	}
	return "hw: " + p.Name
}

// Offloaded returns the filters the profile's target runs in hardware.
func (p Profile) Offloaded(fs []*Filter) []*Filter {
	var out []*Filter
	for _, f := range fs {
		if ok, _ := p.Offloads(f); ok {
			out = append(out, f)
		}
	}
	return out
}

// keepMissInSoftware marks skip_hw every filter the profile cannot match
// and every filter at a higher pref of the same chain, so that a packet the
// hardware cannot decide misses the chain there and continues in software.
// Filters at the same pref never overlap, so they keep their placement.
func (p Profile) keepMissInSoftware(fs []*Filter) {
	if !p.Hardware {
		return
	}
	firstSW := map[uint32]uint16{}
	for _, f := range fs {
		if p.refuses(f) == "" {
			continue
		}
		if pr, ok := firstSW[f.Chain]; !ok || f.Prio < pr {
			firstSW[f.Chain] = f.Prio
		}
	}
	for _, f := range fs {
		if pr, ok := firstSW[f.Chain]; ok && (f.Prio > pr || p.refuses(f) != "") {
			f.Flags = f.Flags&^flagSkipSW | flagSkipHW
		}
	}
}

// MaskedPorts returns the exact cover of [lo, hi] by value/mask pairs
// (the fewest aligned power-of-two blocks), for targets that match masked
// ports but not ranges.
func MaskedPorts(lo, hi uint16) []PortMask {
	var out []PortMask
	for v := uint32(lo); v <= uint32(hi); {
		size := uint32(1)
		for v&(size*2-1) == 0 && v+size*2-1 <= uint32(hi) && size < 1<<16 {
			size *= 2
		}
		out = append(out, PortMask{Value: uint16(v), Mask: uint16(^(size - 1))})
		v += size
	}
	return out
}

// PortMask is a masked port: a port p matches when p&Mask == Value.
type PortMask struct{ Value, Mask uint16 }
