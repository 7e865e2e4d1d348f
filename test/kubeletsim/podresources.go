// Package kubeletsim plays the kubelet's part towards device plugins and
// PodResources clients, over real gRPC on unix sockets: it serves the
// device-plugin Registration service, dials plugins that register, follows
// their ListAndWatch, allocates devices to pods through Allocate, and serves
// the resulting assignments over PodResources v1. It is test code: it lets
// the real SR-IOV device plugin and the project's PodResources client meet
// without a node.
package kubeletsim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/util/flowcontrol"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// GetMode is how the PodResources server answers Get, as kubelets differ.
type GetMode int

const (
	// GetServed answers Get (kubelet 1.27+ with KubeletPodResourcesGet on).
	GetServed GetMode = iota
	// GetUnimplemented answers Unimplemented (kubelets before 1.27).
	GetUnimplemented
	// GetDisabled answers as a kubelet with the feature gate off.
	GetDisabled
)

// PodResources is a PodResources v1 server holding the node's assignments.
type PodResources struct {
	podresourcesv1.UnimplementedPodResourcesListerServer

	mu          sync.Mutex
	pods        []*podresourcesv1.PodResources
	allocatable []*podresourcesv1.ContainerDevices
	getMode     GetMode
	limiter     flowcontrol.RateLimiter
	delay       time.Duration

	served   atomic.Int64
	rejected atomic.Int64
}

// NewPodResources returns an empty server that answers Get and has no rate
// limit; see LimitRate.
func NewPodResources() *PodResources { return &PodResources{} }

// SetPods replaces the pods the server reports.
func (p *PodResources) SetPods(pods ...*podresourcesv1.PodResources) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pods = pods
}

// AddPod adds or replaces one pod.
func (p *PodResources) AddPod(pod *podresourcesv1.PodResources) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, old := range p.pods {
		if old.Namespace == pod.Namespace && old.Name == pod.Name {
			p.pods[i] = pod
			return
		}
	}
	p.pods = append(p.pods, pod)
}

// SetAllocatable replaces the devices GetAllocatableResources reports.
func (p *PodResources) SetAllocatable(devs ...*podresourcesv1.ContainerDevices) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.allocatable = devs
}

// SetGetMode chooses how Get is answered.
func (p *PodResources) SetGetMode(m GetMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.getMode = m
}

// LimitRate applies the kubelet's token-bucket limit to every call; the
// kubelet uses 100 qps with a burst of 10. Calls over it fail with
// ResourceExhausted, like the kubelet's limiter interceptor.
func (p *PodResources) LimitRate(qps float32, burst int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.limiter = flowcontrol.NewTokenBucketRateLimiter(qps, burst)
}

// SetDelay makes every call wait d before it is answered, like a kubelet
// under load (0: answer at once).
func (p *PodResources) SetDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// Served and Rejected count the calls answered and the calls refused by the
// rate limit, as the kubelet's podresources metrics do.
func (p *PodResources) Served() int64   { return p.served.Load() }
func (p *PodResources) Rejected() int64 { return p.rejected.Load() }

func (p *PodResources) admit() error {
	p.mu.Lock()
	l, delay := p.limiter, p.delay
	p.mu.Unlock()
	time.Sleep(delay)
	if l != nil && !l.TryAccept() {
		p.rejected.Add(1)
		return status.Error(codes.ResourceExhausted, "rejected by rate limit")
	}
	p.served.Add(1)
	return nil
}

// List implements PodResourcesListerServer.
func (p *PodResources) List(context.Context, *podresourcesv1.ListPodResourcesRequest) (*podresourcesv1.ListPodResourcesResponse, error) {
	if err := p.admit(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return &podresourcesv1.ListPodResourcesResponse{PodResources: p.pods}, nil
}

// Get implements PodResourcesListerServer with the kubelet's errors.
func (p *PodResources) Get(_ context.Context, r *podresourcesv1.GetPodResourcesRequest) (*podresourcesv1.GetPodResourcesResponse, error) {
	if err := p.admit(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.getMode {
	case GetUnimplemented:
		return nil, status.Error(codes.Unimplemented, "method Get not implemented")
	case GetDisabled:
		return nil, errors.New("PodResources API Get method disabled")
	}
	for _, pod := range p.pods {
		if pod.Namespace == r.PodNamespace && pod.Name == r.PodName {
			return &podresourcesv1.GetPodResourcesResponse{PodResources: pod}, nil
		}
	}
	return nil, fmt.Errorf("pod %s in namespace %s not found", r.PodName, r.PodNamespace)
}

// GetAllocatableResources implements PodResourcesListerServer.
func (p *PodResources) GetAllocatableResources(context.Context, *podresourcesv1.AllocatableResourcesRequest) (*podresourcesv1.AllocatableResourcesResponse, error) {
	if err := p.admit(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return &podresourcesv1.AllocatableResourcesResponse{Devices: p.allocatable}, nil
}

// Serve listens on socket (replacing a stale file, as the kubelet does) and
// serves until the returned stop is called. stop closes the server and
// removes the socket, like a kubelet going down.
func (p *PodResources) Serve(socket string) (stop func(), err error) {
	l, err := listenUnix(socket)
	if err != nil {
		return nil, err
	}
	// Same receive/send limit as the kubelet's PodResources server.
	s := grpc.NewServer(grpc.MaxSendMsgSize(16 * 1024 * 1024))
	podresourcesv1.RegisterPodResourcesListerServer(s, p)
	go func() { _ = s.Serve(l) }()
	return func() { s.Stop(); _ = os.Remove(socket) }, nil
}

func listenUnix(socket string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return nil, err
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socket, err)
	}
	return l, nil
}
