package preflight

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Options are the agent's settings the verdict depends on.
type Options struct {
	// Profile is the --offload-profile value ("auto", "mlx5-6.1"...).
	Profile string
	// ResolveProfile selects the capability profile Profile names on a
	// kernel release (tcdriver.ParseProfile, which the agent passes in:
	// the driver's tests run the preflight, so this package must not
	// import it). Nil judges the device alone, not the agent's flags.
	ResolveProfile func(flag, kernel string) (Profile, error)
	// SoftwareFlag is the flag spelling that keeps every filter in
	// software (skip_hw), e.g. "--tc-offload=skip-hw"; "" when the
	// agent's flags let filters be offloaded.
	SoftwareFlag string
}

// Inspect runs the preflight of each PF (a PCI address or an uplink
// netdev name), in the order given.
func Inspect(ctx context.Context, host Host, pfs []string, opts Options) Report {
	kernel := host.KernelRelease()
	r := Report{Kernel: kernel, ProfileFlag: opts.Profile, PFs: []PF{}}
	if r.ProfileFlag == "" {
		r.ProfileFlag = "auto"
	}
	env := environment{kernel: kernel, opts: opts}
	if opts.ResolveProfile != nil {
		env.profile, env.profileErr = opts.ResolveProfile(opts.Profile, kernel)
		if env.profileErr == nil {
			r.Profile = env.profile.Name
		}
	}
	for _, name := range pfs {
		pf := PF{Name: name, Verdict: Hardware, EswitchMode: "n/a", FlowSteeringMode: "n/a", VFs: -1, Representors: []Port{}, BridgeOffload: "n/a"}
		if err := ctx.Err(); err != nil {
			pf.fail(err)
		} else {
			inspectPF(host, &pf, env)
		}
		r.PFs = append(r.PFs, pf)
	}
	return r
}

// Profile is what the verdict needs of a TC capability profile
// (tcdriver.Profile).
type Profile struct {
	Name string
	// Hardware: the compiler plans filters in hardware.
	Hardware bool
	// CtNew: it matches ct_state +new in hardware (mlx5 from Linux 6.3).
	CtNew bool
}

// environment is what every PF is judged against.
type environment struct {
	kernel     string
	profile    Profile
	profileErr error
	opts       Options
}

// facts are what was read of one PF, for judge.
type facts struct {
	dev  Device
	kind string
	fdb  map[string]int
}

// fail records that the PF could not be inspected: nothing shows that its
// VFs are enforced.
func (p *PF) fail(err error) {
	p.Error = err.Error()
	p.problem(CannotEnforce, "", "cannot be inspected: %v; whether anything is enforced on its VFs is unknown", err)
}

func inspectPF(host Host, pf *PF, env environment) {
	dev, err := host.Device(pf.Name)
	if err != nil {
		pf.fail(err)
		return
	}
	f := facts{dev: dev}
	pf.PCI, pf.Devlink, pf.Driver, pf.VFs = dev.PCI, dev.Devlink.String(), dev.Driver, dev.NumVFs
	if dev.Virtual() {
		if f.kind, err = host.LinkKind(dev.Uplink.Name); err != nil {
			pf.fail(err)
			return
		}
		if f.kind == "" {
			f.kind = "virtual"
		}
		pf.Driver = f.kind
	} else {
		mode, err := host.EswitchMode(dev.Devlink)
		noDevlink := errors.Is(err, ErrNoDevlink)
		switch {
		case noDevlink:
			// A driver without devlink, so without switchdev mode.
			pf.note("%v", err)
		case err != nil:
			pf.fail(fmt.Errorf("eswitch mode: %w", err))
			return
		case mode != "":
			pf.EswitchMode = mode
		}
		switch v, ok, err := host.DevlinkParam(dev.Devlink, "flow_steering_mode"); {
		case noDevlink:
		case err != nil:
			pf.FlowSteeringMode = "unknown"
			pf.note("flow steering mode unknown: %v", err)
		case ok:
			pf.FlowSteeringMode = v
		}
	}
	pf.Uplink = readPort(host, pf, dev.Uplink, nil)
	for _, r := range dev.Representors {
		vf := r.VF
		pf.Representors = append(pf.Representors, readPort(host, pf, r.Netdev, &vf))
	}
	if bridges := bridgesOf(dev); len(bridges) == 1 {
		if f.fdb, err = host.OffloadedFDB(bridges[0]); err != nil {
			pf.note("bridge %s: offloaded FDB entries unknown: %v", bridges[0], err)
		}
	}
	judge(pf, f, env)
}

// readPort reads one port's hw-tc-offload; an error is a problem of the
// PF (not proven in hardware), not a failure of the whole preflight.
func readPort(host Host, pf *PF, nd Netdev, vf *int) Port {
	p := Port{Netdev: nd.Name, VF: vf, Master: nd.Master, HWTCOffload: "unknown"}
	ft, err := host.TCOffload(nd.Name)
	if err != nil {
		pf.problem(SoftwareOnly, "", "hw-tc-offload of %s cannot be read (%v): its filters are not known to be offloaded", nd.Name, err)
		return p
	}
	p.HWTCOffload = ft.String()
	return p
}

// bridgesOf lists the Linux bridges the PF's representors are ports of.
func bridgesOf(dev Device) []string {
	set := map[string]bool{}
	for _, r := range dev.Representors {
		if r.MasterIsBridge {
			set[r.Master] = true
		}
	}
	out := make([]string, 0, len(set))
	for b := range set {
		out = append(out, b)
	}
	sort.Strings(out)
	return out
}

// PFsOfVFs returns the PFs of the devices, sorted, once each: the PFs
// whose VFs the kubelet can allocate. Devices that are no VF (another
// device plugin's) are returned in notVFs.
func PFsOfVFs(host Host, devices []string) (pfs, notVFs []string) {
	set := map[string]bool{}
	for _, d := range devices {
		pf, err := host.PFOfVF(d)
		if err != nil {
			notVFs = append(notVFs, d)
			continue
		}
		set[pf] = true
	}
	for pf := range set {
		pfs = append(pfs, pf)
	}
	sort.Strings(pfs)
	sort.Strings(notVFs)
	return pfs, notVFs
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, ", ")
}
