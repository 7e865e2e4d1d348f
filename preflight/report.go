package preflight

import (
	"errors"
	"fmt"
)

// Report is the preflight of a node: the kernel, the profile it selects,
// and one PF entry per PF inspected.
type Report struct {
	// Kernel is the running kernel's release (uname -r), "" when unknown.
	Kernel string `json:"kernel"`
	// ProfileFlag is the --offload-profile value; Profile the capability
	// profile it selects on this kernel ("" when the flag is invalid).
	ProfileFlag string `json:"profileFlag"`
	Profile     string `json:"profile"`
	PFs         []PF   `json:"pfs"`
}

// PF is what the preflight found for one PF and what it means.
type PF struct {
	// Name is the PF as asked: PCI address or netdev name.
	Name string `json:"pf"`
	PCI  string `json:"pci,omitempty"`
	// Devlink is the devlink handle (pci/0000:3b:00.0), "" for a
	// virtual netdev.
	Devlink string `json:"devlink,omitempty"`
	// Driver is the PF's driver; for a virtual netdev, its link kind.
	Driver string `json:"driver"`
	// EswitchMode is legacy or switchdev; "n/a" without an eswitch.
	EswitchMode string `json:"eswitchMode"`
	// FlowSteeringMode is the devlink parameter flow_steering_mode (mlx5:
	// dmfs or smfs), "n/a" where the driver has no such parameter.
	FlowSteeringMode string `json:"flowSteeringMode"`
	// VFs is sriov_numvfs, -1 when the device has no SR-IOV.
	VFs          int    `json:"vfs"`
	Uplink       Port   `json:"uplink"`
	Representors []Port `json:"representors"`
	// Bridge is the Linux bridge the representors are ports of ("" none;
	// several are listed comma-separated).
	Bridge string `json:"bridge,omitempty"`
	// BridgeOffload is active, expected, no or n/a, with why.
	BridgeOffload string `json:"bridgeOffload"`
	// OffloadedFDB counts the bridge's FDB entries on the PF's ports that
	// the driver marked offloaded.
	OffloadedFDB int `json:"offloadedFDB"`

	Verdict  Verdict   `json:"verdict"`
	Problems []Problem `json:"problems,omitempty"`
	// Notes are facts that do not change the verdict.
	Notes []string `json:"notes,omitempty"`
	// Error is set when the PF could not be inspected; the verdict is
	// then CannotEnforce (nothing proves otherwise).
	Error string `json:"error,omitempty"`
}

// Port is the uplink or a VF representor.
type Port struct {
	Netdev string `json:"netdev"`
	// VF is the VF number of a representor; nil for the uplink.
	VF *int `json:"vf,omitempty"`
	// HWTCOffload is on, off, "off [fixed]" (the device cannot) or
	// unknown (not readable; see the PF's problems).
	HWTCOffload string `json:"hwTcOffload"`
	Master      string `json:"master,omitempty"`
}

// Fixes lists the PF's fix commands, once each, in problem order.
func (p PF) Fixes() []string {
	var out []string
	seen := map[string]bool{}
	for _, pr := range p.Problems {
		if pr.Fix != "" && !seen[pr.Fix] {
			seen[pr.Fix] = true
			out = append(out, pr.Fix)
		}
	}
	return out
}

// Label names the PF for logs and metrics: its PCI address, else its
// netdev.
func (p PF) Label() string {
	if p.PCI != "" {
		return p.PCI
	}
	return p.Name
}

// Verdict is the node's verdict: the worst of its PFs' (Hardware when
// there is none).
func (r Report) Verdict() Verdict {
	v := Hardware
	for _, p := range r.PFs {
		v = worse(v, p.Verdict)
	}
	return v
}

// Err joins the errors of the PFs that could not be inspected, each naming
// its PF.
func (r Report) Err() error {
	var errs []error
	for _, p := range r.PFs {
		if p.Error != "" {
			errs = append(errs, fmt.Errorf("PF %s: %s", p.Name, p.Error))
		}
	}
	return errors.Join(errs...)
}

func (p *PF) problem(v Verdict, fix, format string, args ...any) {
	p.Problems = append(p.Problems, Problem{Verdict: v, Reason: fmt.Sprintf(format, args...), Fix: fix})
	p.Verdict = worse(p.Verdict, v)
}

func (p *PF) note(format string, args ...any) {
	p.Notes = append(p.Notes, fmt.Sprintf(format, args...))
}
