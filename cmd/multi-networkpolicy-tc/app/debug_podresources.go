package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
)

// debug podresources saves what the kubelet says, so that `debug mappings
// --offline --podresources-file` can be run elsewhere (in a bug report).
func newDebugPodResourcesCommand(stdout io.Writer) *cobra.Command {
	var socket string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "podresources",
		Short: "Print the kubelet's PodResources List answer as JSON (input of debug mappings --podresources-file)",
		Example: `  multi-networkpolicy-tc debug podresources > podresources.json
  multi-networkpolicy-tc debug mappings --offline -f pods.yaml -f nads.yaml --podresources-file podresources.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := podresources.CheckSocket(socket); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			entries, err := listPodResources(ctx, socket)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(&podresourcesv1.ListPodResourcesResponse{PodResources: entries})
		},
	}
	cmd.Flags().StringVar(&socket, "podresources-socket", podresources.DefaultSocket, "kubelet PodResources API socket")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "overall time limit")
	return cmd
}

func listPodResources(ctx context.Context, socket string) ([]*podresourcesv1.PodResources, error) {
	client, err := podresources.New(socket, podresources.Options{})
	if err != nil {
		return nil, err
	}
	defer func() { _ = client.Close() }()
	return client.List(ctx)
}

// readPodResourcesFile reads a ListPodResourcesResponse saved as JSON.
func readPodResourcesFile(path string) ([]*podresourcesv1.PodResources, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--podresources-file: %w", err)
	}
	var resp podresourcesv1.ListPodResourcesResponse
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&resp); err != nil {
		return nil, fmt.Errorf("--podresources-file %s: not a PodResources List answer (debug podresources -o json): %w", path, err)
	}
	for i, p := range resp.GetPodResources() {
		if p.GetNamespace() == "" || p.GetName() == "" {
			return nil, fmt.Errorf("--podresources-file %s: pod_resources[%d]: namespace and name are required", path, i)
		}
	}
	return resp.GetPodResources(), nil
}

var errNotResolvedOffline = errors.New("not resolved: offline, /sys not read")

// unresolvedOffline is the resolver of `debug mappings` from files alone:
// it reads nothing of the node.
type unresolvedOffline struct{}

func (unresolvedOffline) Resolve(string) (sriov.VF, error) { return sriov.VF{}, errNotResolvedOffline }
