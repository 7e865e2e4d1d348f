package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"text/tabwriter"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

type cleanupOptions struct {
	devs   []string
	dryRun bool
	output string
}

func newCleanupCommand(stdout io.Writer) *cobra.Command {
	o := &cleanupOptions{}
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "Remove every TC filter this agent installed on this node, and nothing else",
		Long: `cleanup removes the agent's TC state from this node's network devices: its
entry filter in chain 0 and its chains (docs/tc-rule-pipeline.md#ownership).
Filters of other tools and the clsact qdisc stay. It reads each device back
and fails if a filter of ours is left.

Stop the agent on the node first (delete the DaemonSet, or move the node out
of its nodeSelector): a running agent reinstalls its filters. Run it on the
node, as root or with CAP_NET_ADMIN, for example in the agent's image:
  kubectl debug node/NODE -it --profile=netadmin --image=IMAGE -- multi-networkpolicy-tc cleanup
Devices whose filters are removed stop enforcing policy at once.`,
		Example: `  multi-networkpolicy-tc cleanup --dry-run
  multi-networkpolicy-tc cleanup --dev eth2_0 --dev eth2_1 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runCleanup(cmd.Context(), o, stdout)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.devs, "dev", nil, "only these devices (repeatable); default: every device of the network namespace")
	f.BoolVar(&o.dryRun, "dry-run", false, "report what would be removed, change nothing")
	f.StringVarP(&o.output, "output", "o", "text", "output format: text or json")
	return cmd
}

func runCleanup(ctx context.Context, o *cleanupOptions, stdout io.Writer) error {
	if o.output != "text" && o.output != "json" {
		return badInput(fmt.Errorf("--output %q: want text or json", o.output))
	}
	devs := o.devs
	if len(devs) == 0 {
		ifs, err := net.Interfaces()
		if err != nil {
			return fmt.Errorf("listing network devices: %w", err)
		}
		for _, i := range ifs {
			devs = append(devs, i.Name)
		}
	}
	drv, err := tcdriver.New(tcdriver.Options{}, logrus.StandardLogger(), nil)
	if err != nil {
		return err
	}
	defer func() { _ = drv.Close() }()
	results, cleanupErr := tcdriver.Cleanup(ctx, drv, devs, o.dryRun)
	if err := printCleanup(stdout, results, o); err != nil {
		return err
	}
	return cleanupErr
}

func printCleanup(w io.Writer, results []tcdriver.CleanupResult, o *cleanupOptions) error {
	if o.output == "json" {
		if results == nil {
			results = []tcdriver.CleanupResult{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"dryRun": o.dryRun, "devices": results})
	}
	verb := "removed"
	if o.dryRun {
		verb = "would remove"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	_, _ = fmt.Fprintln(tw, "DEVICE\tOURS\tFOREIGN (KEPT)")
	removed, kept, devices := 0, 0, 0
	for _, r := range results {
		_, _ = fmt.Fprintf(tw, "%s\t%d\t%d\n", r.Dev, r.Removed, r.Kept)
		removed += r.Removed
		kept += r.Kept
		if r.Removed > 0 {
			devices++
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "%s %d filters of ours from %d devices; %d foreign filters kept\n", verb, removed, devices, kept)
	return err
}
