package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/preflight"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// exitNotInHardware: debug offload found a PF whose filters are not all
// enforced in hardware (software only, or not at all).
const exitNotInHardware = 3

type debugOffloadOptions struct {
	socket    string
	pfs       []string
	output    string
	profile   string
	tcOffload string
	timeout   time.Duration
}

func newDebugOffloadCommand(stdout io.Writer) *cobra.Command {
	o := &debugOffloadOptions{}
	cmd := &cobra.Command{
		Use:   "offload",
		Short: "Tell, for each PF whose VFs pods get, whether their filters are enforced in hardware, and how to fix what is not",
		Long: `offload runs the agent's offload preflight: for every PF whose VFs the
kubelet can allocate (PodResources GetAllocatableResources; or the PFs named
with --pf, without the kubelet), it reads the eswitch mode and the
flow_steering_mode parameter (devlink), hw-tc-offload on the uplink and on
every VF representor (ethtool), the driver, the VFs and their representors
(sysfs), the bridge the representors are ports of and its offloaded FDB
entries, and the running kernel with the capability profile
--offload-profile selects there. Its verdict per PF is one of
  enforced in hardware
  enforced in software only (slow path)
  cannot enforce
with the command that fixes each problem.

Bridge offload is inferred (mlx5_core, switchdev, Linux 5.14+, representors
on a Linux bridge) and shown "active" once the bridge has an FDB entry the
driver marked offloaded.

It exits 0 when every PF is enforced in hardware, 3 when one is not, 1 when
a PF cannot be inspected or the kubelet cannot be asked.`,
		Example: `  multi-networkpolicy-tc debug offload
  multi-networkpolicy-tc debug offload -o json
  multi-networkpolicy-tc debug offload --pf ens1f0np0 --pf 0000:3b:00.1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return &ExitError{Code: exitBadInput, Err: err}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			return runDebugOffload(ctx, o, preflight.NewSystem(), kubeletAllocatable(o.socket), stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.socket, "podresources-socket", podresources.DefaultSocket, "kubelet PodResources API socket")
	f.StringArrayVar(&o.pfs, "pf", nil, "inspect this PF (PCI address or uplink netdev) instead of asking the kubelet; repeatable")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	f.StringVar(&o.profile, "offload-profile", tcdriver.ProfileAuto, "the agent's --offload-profile")
	f.StringVar(&o.tcOffload, "tc-offload", string(tcdriver.OffloadAuto), "the agent's --tc-offload")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "overall time limit")
	return cmd
}

func (o *debugOffloadOptions) validate() error {
	switch o.output {
	case "table", "json":
	default:
		return fmt.Errorf("--output %q: must be table or json", o.output)
	}
	if _, err := tcdriver.ParseOffload(o.tcOffload); err != nil {
		return err
	}
	if _, err := tcdriver.ParseProfile(o.profile, ""); err != nil {
		return err
	}
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout %s: must be positive", o.timeout)
	}
	return nil
}

// resolveProfile is tcdriver.ParseProfile for the preflight.
func resolveProfile(flag, kernel string) (preflight.Profile, error) {
	p, err := tcdriver.ParseProfile(flag, kernel)
	return preflight.Profile{Name: p.Name, Hardware: p.Hardware, CtNew: p.CtNew}, err
}

// preflightOptions are the agent flags the preflight's verdict depends on.
func preflightOptions(tcOffload, profile string) preflight.Options {
	o := preflight.Options{Profile: profile, ResolveProfile: resolveProfile}
	if offload, err := tcdriver.ParseOffload(tcOffload); err == nil && offload == tcdriver.OffloadSoftware {
		o.SoftwareFlag = "--tc-offload=" + tcOffload
	}
	return o
}

// allocatableDevices lists the device IDs the kubelet can allocate.
type allocatableDevices func(ctx context.Context) ([]string, error)

func kubeletAllocatable(socket string) allocatableDevices {
	return func(ctx context.Context) ([]string, error) {
		if err := podresources.CheckSocket(socket); err != nil {
			return nil, err
		}
		client, err := podresources.New(socket, podresources.Options{})
		if err != nil {
			return nil, err
		}
		defer func() { _ = client.Close() }()
		return allocatableIDs(ctx, client)
	}
}

// allocatableIDs flattens GetAllocatableResources into device IDs.
func allocatableIDs(ctx context.Context, pr interface {
	GetAllocatableResources(context.Context) (*podresourcesv1.AllocatableResourcesResponse, error)
},
) ([]string, error) {
	resp, err := pr.GetAllocatableResources(ctx)
	if err != nil {
		return nil, fmt.Errorf("kubelet GetAllocatableResources: %w", err)
	}
	var ids []string
	for _, d := range resp.GetDevices() {
		ids = append(ids, d.GetDeviceIds()...)
	}
	return ids, nil
}

func runDebugOffload(ctx context.Context, o *debugOffloadOptions, host preflight.Host, allocatable allocatableDevices, stdout io.Writer) error {
	pfs := o.pfs
	if len(pfs) == 0 {
		ids, err := allocatable(ctx)
		if err != nil {
			return err
		}
		pfs, _ = preflight.PFsOfVFs(host, ids)
	}
	r := preflight.Inspect(ctx, host, pfs, preflightOptions(o.tcOffload, o.profile))
	if err := writeDebugOffload(stdout, o.output, r); err != nil {
		return err
	}
	if err := r.Err(); err != nil {
		return err
	}
	if v := r.Verdict(); v != preflight.Hardware {
		return &ExitError{Code: exitNotInHardware, Err: fmt.Errorf("not every PF is enforced in hardware (%s): see the problems above", v)}
	}
	return nil
}

func writeDebugOffload(w io.Writer, format string, r preflight.Report) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	out := &debugTableWriter{w: w}
	out.printf("kernel %s, offload profile %s (--offload-profile=%s)\n\n", dash(r.Kernel), dash(r.Profile), r.ProfileFlag)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	out.w = tw
	out.printf("PF\tUPLINK\tDRIVER\tESWITCH\tSTEERING\tVFS\tREPRESENTORS\tHW-TC-OFFLOAD\tBRIDGE\tBRIDGE OFFLOAD\tVERDICT\n")
	for _, p := range r.PFs {
		vfs := "-"
		if p.VFs >= 0 {
			vfs = fmt.Sprint(p.VFs)
		}
		out.printf("%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", p.Label(), dash(p.Uplink.Netdev), dash(p.Driver), p.EswitchMode,
			p.FlowSteeringMode, vfs, len(p.Representors), tcOffloadSummary(p), dash(p.Bridge), p.BridgeOffload, p.Verdict)
	}
	if out.err != nil {
		return out.err
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	out.w = w
	for _, p := range r.PFs {
		if len(p.Problems) == 0 && len(p.Notes) == 0 {
			continue
		}
		name := p.Label()
		if p.Uplink.Netdev != "" && p.Uplink.Netdev != name {
			name += " (" + p.Uplink.Netdev + ")"
		}
		out.printf("\n%s: %s\n", name, p.Verdict)
		for _, pr := range p.Problems {
			out.printf("  - %s\n", pr.Reason)
			if pr.Fix != "" {
				out.printf("    fix: %s\n", pr.Fix)
			}
		}
		for _, n := range p.Notes {
			out.printf("  note: %s\n", n)
		}
	}
	return out.err
}

// tcOffloadSummary counts the ports with hw-tc-offload on: "5/5 on".
func tcOffloadSummary(p preflight.PF) string {
	if p.Uplink.Netdev == "" {
		return "-"
	}
	ports := append([]preflight.Port{p.Uplink}, p.Representors...)
	n := 0
	var unknown []string
	for _, port := range ports {
		switch port.HWTCOffload {
		case "on":
			n++
		case "unknown":
			unknown = append(unknown, port.Netdev)
		}
	}
	s := fmt.Sprintf("%d/%d on", n, len(ports))
	if len(unknown) > 0 {
		s += ", " + fmt.Sprint(len(unknown)) + " unknown"
	}
	return s
}
