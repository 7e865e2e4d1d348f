package app

import (
	"errors"
	"io"

	"github.com/spf13/cobra"
)

func newRenderCommand(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "render -f FILE...",
		Short: "Show the rules computed for pods from policy, pod, namespace and NAD manifests",
		RunE: func(*cobra.Command, []string) error {
			_ = stdout
			return errors.New("not implemented yet")
		},
	}
}
