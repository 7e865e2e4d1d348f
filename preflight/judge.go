package preflight

import (
	"fmt"
	"strings"
)

// The driver the capability profiles and bridge offload facts describe.
const driverMLX5 = "mlx5_core"

// judge turns what was read of a PF into problems, each with its fix, and
// so into the PF's verdict.
func judge(pf *PF, f facts, env environment) {
	dev := f.dev
	if dev.Virtual() {
		pf.problem(SoftwareOnly, "", "%s is a %s netdev, not a NIC port: no eswitch offloads its filters, they run in software for every packet (use VFs of a switchdev mlx5 PF for hardware enforcement)",
			dev.Uplink.Name, f.kind)
		judgeBridge(pf, f, env)
		return
	}
	switchdev := judgeEswitch(pf, dev)
	judgeDriver(pf, dev)
	if switchdev {
		judgePorts(pf)
	}
	judgeFlags(pf, env)
	judgeSteering(pf, dev)
	judgeBridge(pf, f, env)
}

// judgeEswitch checks that the VFs have representors, and says whether
// the eswitch is in switchdev mode.
func judgeEswitch(pf *PF, dev Device) bool {
	numvfs := fmt.Sprintf("/sys/bus/%s/devices/%s/sriov_numvfs", dev.Devlink.Bus, dev.Devlink.Name)
	switch pf.EswitchMode {
	case "switchdev":
	case "legacy":
		pf.problem(CannotEnforce, "devlink dev eswitch set "+dev.Devlink.String()+" mode switchdev",
			"eswitch of %s is in legacy mode: its VFs have no representors, so the agent has nowhere to install their filters and pods on them are not enforced (mlx5: unbind the VFs from the driver first, and set flow_steering_mode before switching)",
			dev.Devlink)
		return false
	default:
		if dev.NumVFs < 0 {
			pf.problem(CannotEnforce, "", "%s (driver %s) has neither SR-IOV VFs nor a switchdev eswitch: no VF representor to enforce on", dev.Devlink, dash(dev.Driver))
			return false
		}
		pf.problem(CannotEnforce, "", "%s (driver %s) reports no switchdev eswitch (eswitch mode %s): its VFs have no representors, so the agent has nowhere to install their filters and pods on them are not enforced (the NIC or driver has no switchdev mode)",
			dev.Devlink, dash(dev.Driver), pf.EswitchMode)
		return false
	}
	if dev.NumVFs == 0 {
		pf.problem(CannotEnforce, "echo <N> > "+numvfs, "%s has no VFs (sriov_numvfs is 0): there is no VF representor to enforce on", dev.Devlink)
		return true
	}
	if dev.NumVFs < 0 && len(dev.Representors) == 0 {
		pf.problem(CannotEnforce, "", "%s has no SR-IOV (no sriov_numvfs) and no VF representor: nothing to enforce on", dev.Devlink)
		return true
	}
	have := map[int]bool{}
	for _, r := range dev.Representors {
		have[r.VF] = true
	}
	var missing []int
	var missingPCI []string
	for i := range dev.NumVFs {
		if !have[i] {
			missing = append(missing, i)
			if pci := dev.VFPCI[i]; pci != "" {
				missingPCI = append(missingPCI, pci)
			}
		}
	}
	if len(missing) > 0 {
		which := "VF " + joinInts(missing)
		if len(missing) > 1 {
			which = "VFs " + joinInts(missing)
		}
		if len(missingPCI) > 0 {
			which += " (" + strings.Join(missingPCI, ", ") + ")"
		}
		pf.problem(CannotEnforce, fmt.Sprintf("echo 0 > %s && echo %d > %s", numvfs, dev.NumVFs, numvfs),
			"%s of %s: no representor (no netdev with phys_switch_id %s and phys_port_name pf<N>vf<M>): pods on them are not enforced; recreating the VFs recreates their representors (only while no pod uses them; or move the representor back into the agent's network namespace)",
			which, dev.Devlink, dash(dev.Uplink.SwitchID))
	}
	return true
}

// judgeDriver: only mlx5 is known to offload the pipelines the agent
// installs.
func judgeDriver(pf *PF, dev Device) {
	switch dev.Driver {
	case driverMLX5:
	case "netdevsim":
		pf.problem(SoftwareOnly, "", "driver netdevsim models a switchdev eswitch but offloads no flower filter (its block callback takes cls_bpf only): every filter runs in software")
	default:
		pf.problem(SoftwareOnly, "", "driver %s: the capability profiles describe mlx5_core (ConnectX) only; filters are not known to be offloaded by %s, check their in_hw with `explain --on-node`",
			dash(dev.Driver), dash(dev.Driver))
	}
}

// judgePorts: hw-tc-offload on the uplink and every representor.
func judgePorts(pf *PF) {
	ports := append([]Port{pf.Uplink}, pf.Representors...)
	for _, p := range ports {
		role := "representor"
		if p.VF == nil {
			role = "uplink"
		}
		switch p.HWTCOffload {
		case "off":
			pf.problem(SoftwareOnly, "ethtool -K "+p.Netdev+" hw-tc-offload on",
				"hw-tc-offload is off on %s %s: the kernel offloads none of its filters, they run in software", role, p.Netdev)
		case "off [fixed]":
			pf.problem(SoftwareOnly, "", "hw-tc-offload is off [fixed] on %s %s: its driver cannot offload TC filters there", role, p.Netdev)
		}
	}
}

// judgeFlags: the agent's flags and the running kernel against the
// profile they select.
func judgeFlags(pf *PF, env environment) {
	if env.opts.SoftwareFlag != "" {
		pf.problem(SoftwareOnly, "--tc-offload=auto", "%s installs every filter skip_hw: nothing is offloaded", env.opts.SoftwareFlag)
	}
	if env.opts.ResolveProfile == nil {
		return
	}
	if env.profileErr != nil {
		pf.problem(CannotEnforce, "--offload-profile=auto", "%v: the agent does not start", env.profileErr)
		return
	}
	prof := env.profile
	if !prof.Hardware {
		pf.problem(SoftwareOnly, "--offload-profile=auto", "--offload-profile=%s: the compiler plans for no hardware and expects no filter there", prof.Name)
		return
	}
	at61, known := kernelAtLeast(env.kernel, 6, 1)
	at63, _ := kernelAtLeast(env.kernel, 6, 3)
	switch {
	case !known:
		pf.note("kernel release unknown: profile %s assumed (the stricter one)", prof.Name)
	case !at61:
		pf.problem(SoftwareOnly, "upgrade the kernel to Linux 6.1 or later",
			"Linux %s is older than 6.1, the oldest kernel a capability profile describes (%s): the driver may refuse filters the profile puts in hardware, which then run in software",
			env.kernel, "mlx5-6.1")
	case prof.CtNew && !at63:
		pf.problem(SoftwareOnly, "--offload-profile=auto",
			"--offload-profile=%s on Linux %s: mlx5 matches ct_state +new only from 6.3, so the filters that profile puts in hardware with it run in software (and are refused with --tc-offload=required)",
			prof.Name, env.kernel)
	}
}

// judgeSteering notes mlx5's flow steering mode; it changes how fast rules
// are inserted, not where they run.
func judgeSteering(pf *PF, dev Device) {
	if dev.Driver == driverMLX5 && pf.FlowSteeringMode == "dmfs" {
		pf.note("flow_steering_mode is dmfs (firmware-managed): smfs inserts rules much faster, which matters with many pods and connection tracking: devlink dev param set %s name flow_steering_mode value smfs cmode runtime (before switching the eswitch to switchdev)",
			dev.Devlink)
	}
}

// judgeBridge reports the representors' bridge and whether the driver
// offloads it: inferred for mlx5 (switchdev, Linux 5.14+, representors on
// a Linux bridge), corroborated by FDB entries marked offloaded.
func judgeBridge(pf *PF, f facts, env environment) {
	dev := f.dev
	bridges := bridgesOf(dev)
	var alone []string
	for _, r := range dev.Representors {
		if !r.MasterIsBridge {
			alone = append(alone, r.Name)
		}
	}
	if dev.Virtual() && dev.Uplink.MasterIsBridge {
		bridges = []string{dev.Uplink.Master}
	}
	pf.Bridge = strings.Join(bridges, ",")
	ours := map[string]bool{dev.Uplink.Name: true}
	for _, r := range dev.Representors {
		ours[r.Name] = true
	}
	for port, n := range f.fdb {
		if ours[port] {
			pf.OffloadedFDB += n
		}
	}
	switch {
	case len(bridges) == 0:
		if len(dev.Representors) > 0 {
			pf.BridgeOffload = "n/a"
			pf.note("representors are on no Linux bridge: each VF is enforced alone (representor placement); accelerated-bridge-cni puts them on one")
		}
		return
	case len(bridges) > 1:
		pf.note("representors are on %d bridges (%s): each bridge is enforced on its own", len(bridges), pf.Bridge)
	}
	if len(alone) > 0 && len(bridges) > 0 {
		pf.note("representors %s are on no bridge", strings.Join(alone, ", "))
	}
	at514, known := kernelAtLeast(env.kernel, 5, 14)
	switch {
	case pf.OffloadedFDB > 0:
		pf.BridgeOffload = "active"
		pf.note("bridge offload active: %s has offloaded %d FDB entries of %s", dash(pf.Driver), pf.OffloadedFDB, pf.Bridge)
	case dev.Driver != driverMLX5 || pf.EswitchMode != "switchdev":
		pf.BridgeOffload = "no"
		pf.note("bridge %s is not offloaded: no FDB entry offloaded, and only mlx5_core in switchdev mode is known to offload it; frames between its ports are bridged in software", pf.Bridge)
	case known && !at514:
		pf.BridgeOffload = "no"
		pf.problem(SoftwareOnly, "upgrade the kernel to Linux 5.14 or later",
			"Linux %s: mlx5 offloads a Linux bridge from 5.14 on: frames between the ports of %s are bridged in software", env.kernel, pf.Bridge)
	default:
		pf.BridgeOffload = "expected"
		pf.note("bridge offload expected (mlx5_core, switchdev, Linux 5.14+, representors on %s) but no FDB entry offloaded yet: nothing learned, or not offloaded; check `bridge fdb show br %s` for \"offload\"", pf.Bridge, pf.Bridge)
	}
}
