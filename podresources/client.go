// Package podresources reads, from the kubelet's PodResources v1 API, which
// devices each local pod holds, and maps them to the pod's secondary
// networks the way multus handed them to the CNI.
package podresources

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/wait"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

const (
	// DefaultSocket is where the kubelet serves PodResources.
	DefaultSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"
	// MaxRecvMsgSize matches the kubelet's own limit for the API
	// (podresources.DefaultMaxMsgSize): a List on a full node is large.
	MaxRecvMsgSize = 16 * 1024 * 1024
	// DefaultCallTimeout bounds one RPC attempt.
	DefaultCallTimeout = 10 * time.Second
)

// ErrPodNotFound is returned by Get for a pod the kubelet does not know.
var ErrPodNotFound = errors.New("pod not found in PodResources")

// Options tune a Client. Zero values take the defaults.
type Options struct {
	// CallTimeout bounds each RPC attempt (DefaultCallTimeout).
	CallTimeout time.Duration
	// Backoff paces retries after Unavailable (socket missing, kubelet
	// restarting) and ResourceExhausted (the kubelet's rate limit, 100 qps
	// burst 10). Steps caps the number of attempts; the caller's context
	// bounds them in time. Default: 100ms doubling to 5s, 20% jitter, until
	// the context ends.
	Backoff wait.Backoff
}

// Client talks to the kubelet's PodResources v1 API over its unix socket.
// It is safe for concurrent use. The gRPC connection redials the socket by
// itself when the kubelet restarts; Client retries the calls that failed in
// between, so callers see either an answer or their context's end.
type Client struct {
	socket      string
	conn        *grpc.ClientConn
	api         podresourcesv1.PodResourcesListerClient
	callTimeout time.Duration
	backoff     wait.Backoff
	// getUnsupported remembers that this kubelet answered Get with
	// Unimplemented or "disabled", so later Gets go straight to List.
	getUnsupported atomic.Bool
}

// New returns a client for the socket. It does not connect: a missing
// socket is retried on each call, as a kubelet may start after the agent.
func New(socket string, opts Options) (*Client, error) {
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	if opts.Backoff.Duration <= 0 {
		opts.Backoff = wait.Backoff{Duration: 100 * time.Millisecond, Factor: 2, Jitter: 0.2, Cap: 5 * time.Second}
	}
	if opts.Backoff.Steps <= 0 {
		opts.Backoff.Steps = math.MaxInt32
	}
	conn, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxRecvMsgSize)),
		// gRPC's default reconnect backoff grows to 2 minutes; a kubelet
		// restart takes seconds, so redial the socket at most 2s apart.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: opts.CallTimeout,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("podresources client for %s: %w", socket, err)
	}
	return &Client{
		socket:      socket,
		conn:        conn,
		api:         podresourcesv1.NewPodResourcesListerClient(conn),
		callTimeout: opts.CallTimeout,
		backoff:     opts.Backoff,
	}, nil
}

// CheckSocket tells, in words a user can act on, why the socket cannot be
// used. Commands run once call it first; the agent instead waits for it.
func CheckSocket(socket string) error {
	fi, err := os.Stat(socket)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pod-resources socket %s does not exist: is the kubelet running on this node, and is --podresources-socket right?", socket)
	}
	if err != nil {
		return fmt.Errorf("pod-resources socket %s: %w", socket, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("pod-resources socket %s is not a unix socket", socket)
	}
	return nil
}

// Socket is the path the client dials.
func (c *Client) Socket() string { return c.socket }

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }

// List returns every pod the kubelet knows, with the devices of each container.
func (c *Client) List(ctx context.Context) ([]*podresourcesv1.PodResources, error) {
	var resp *podresourcesv1.ListPodResourcesResponse
	err := c.call(ctx, "List", func(ctx context.Context) (err error) {
		resp, err = c.api.List(ctx, &podresourcesv1.ListPodResourcesRequest{})
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.GetPodResources(), nil
}

// Get returns one pod's resources. Kubelets before 1.27, or with the
// KubeletPodResourcesGet feature gate off, don't serve Get; then it lists and
// filters, and keeps doing so for this client.
func (c *Client) Get(ctx context.Context, namespace, name string) (*podresourcesv1.PodResources, error) {
	if !c.getUnsupported.Load() {
		var resp *podresourcesv1.GetPodResourcesResponse
		err := c.call(ctx, "Get", func(ctx context.Context) (err error) {
			resp, err = c.api.Get(ctx, &podresourcesv1.GetPodResourcesRequest{PodNamespace: namespace, PodName: name})
			return err
		})
		switch {
		case err == nil:
			return resp.GetPodResources(), nil
		case getUnsupported(err):
			c.getUnsupported.Store(true)
		case podNotFound(err):
			return nil, fmt.Errorf("pod %s/%s: %w (kubelet: %v)", namespace, name, ErrPodNotFound, status.Convert(err).Message())
		default:
			return nil, err
		}
	}
	pods, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range pods {
		if p.GetNamespace() == namespace && p.GetName() == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s: %w", namespace, name, ErrPodNotFound)
}

// GetAllocatableResources returns the devices the node can hand out.
func (c *Client) GetAllocatableResources(ctx context.Context) (*podresourcesv1.AllocatableResourcesResponse, error) {
	var resp *podresourcesv1.AllocatableResourcesResponse
	err := c.call(ctx, "GetAllocatableResources", func(ctx context.Context) (err error) {
		resp, err = c.api.GetAllocatableResources(ctx, &podresourcesv1.AllocatableResourcesRequest{})
		return err
	})
	return resp, err
}

// call runs one RPC with a timeout per attempt, retrying with backoff while
// the kubelet is unreachable or rate-limits us: retrying at once would only
// spend the next token of its limiter.
func (c *Client) call(ctx context.Context, method string, rpc func(context.Context) error) error {
	// b.Steps counts down only to pace the delays: wait.Backoff zeroes it on
	// reaching Cap, after which Step keeps returning Cap.
	b := c.backoff
	for attempt := 1; ; attempt++ {
		callCtx, cancel := context.WithTimeout(ctx, c.callTimeout)
		err := rpc(callCtx)
		cancel()
		if err == nil {
			return nil
		}
		code := status.Code(err)
		if code != codes.Unavailable && code != codes.ResourceExhausted {
			return fmt.Errorf("podresources %s on %s: %w", method, c.socket, err)
		}
		if attempt >= c.backoff.Steps {
			return fmt.Errorf("podresources %s on %s: giving up: %w", method, c.socket, err)
		}
		if code == codes.Unavailable {
			// Leave idle at once rather than after gRPC's own backoff timer.
			c.conn.Connect()
		}
		t := time.NewTimer(b.Step())
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("podresources %s on %s: %w (last error: %w)", method, c.socket, ctx.Err(), err)
		case <-t.C:
		}
	}
}

func getUnsupported(err error) bool {
	s := status.Convert(err)
	// The kubelet answers "PodResources API Get method disabled" with code
	// Unknown when the KubeletPodResourcesGet feature gate is off.
	return s.Code() == codes.Unimplemented || strings.Contains(s.Message(), "disabled")
}

func podNotFound(err error) bool {
	s := status.Convert(err)
	// The kubelet's Get answers "pod X in namespace Y not found" as Unknown.
	return s.Code() == codes.NotFound || (s.Code() == codes.Unknown && strings.Contains(s.Message(), "not found"))
}
