// Package app wires the multi-networkpolicy-tc command line: the agent (the
// default command) and its subcommands.
package app

import (
	"errors"
	"fmt"
	"io"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

// ExitError carries a specific process exit code out of a subcommand.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Exit codes shared by the subcommands.
const (
	exitFailure  = 1
	exitBadInput = 2
)

type logOptions struct {
	format string
	level  string
}

func (o *logOptions) apply(stderr io.Writer) error {
	logrus.SetOutput(stderr)
	switch o.format {
	case "text":
		logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	case "json":
		logrus.SetFormatter(&logrus.JSONFormatter{})
	default:
		return fmt.Errorf("--log-format %q: must be text or json", o.format)
	}
	lvl, err := parseLogLevel(o.level)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	logrus.SetLevel(lvl)
	return nil
}

// NewRootCommand builds the command tree. Subcommands register themselves
// here so that `--help` lists everything the binary can do.
func NewRootCommand(stdout, stderr io.Writer) *cobra.Command {
	logs := &logOptions{}
	root := &cobra.Command{
		Use:           "multi-networkpolicy-tc",
		Short:         "Enforce MultiNetworkPolicy on SR-IOV VF representors with TC flower",
		SilenceUsage:  true,
		SilenceErrors: true,
		// --version: cobra's flag, printing what `version` prints.
		Version: currentVersion().String(),
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return logs.apply(stderr)
		},
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&logs.format, "log-format", "text", "log format: text or json")
	pf.StringVarP(&logs.level, "log-level", "v", "info", "log level: panic, fatal, error, warn, info, debug or trace, or a klog verbosity (0-3 info, 4 debug, 5+ trace)")
	// klog's --v, as upstream DaemonSets spell it (-v is the shorthand above).
	pf.StringVar(&logs.level, "v", "info", "same as --log-level")
	_ = pf.MarkHidden("v")

	// The agent is the default command: `multi-networkpolicy-tc --flags`
	// runs it, as upstream's DaemonSets invoke it.
	agentOpts := NewAgentOptions()
	agentOpts.AddFlags(root.Flags())
	compat := &compatFlags{}
	addCompatFlags(root.Flags(), compat)
	runAgent := newAgentCommandRunner(agentOpts)
	root.RunE = func(cmd *cobra.Command, args []string) error {
		logrus.WithFields(versionFields()).Info("multi-networkpolicy-tc")
		if err := applyCompatFlags(cmd.Flags(), compat, agentOpts, logrus.StandardLogger()); err != nil {
			return &ExitError{Code: exitBadInput, Err: err}
		}
		return runAgent(cmd, args)
	}

	root.AddCommand(newRenderCommand(stdout))
	root.AddCommand(newDebugCommand(stdout))
	root.AddCommand(newVersionCommand(stdout))
	root.AddCommand(newCleanupCommand(stdout))
	root.AddCommand(newExplainCommand(stdout))
	return root
}

// Main runs the command line and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	root := NewRootCommand(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "Error: %v\n", err)
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return exitFailure
}
