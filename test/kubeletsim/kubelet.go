package kubeletsim

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	deviceplugin "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// Kubelet is the device manager half of a kubelet: plugins register with it,
// it follows their devices, allocates them to pods and publishes the
// assignments on a PodResources server.
type Kubelet struct {
	deviceplugin.UnimplementedRegistrationServer

	dir          string
	podResources *PodResources
	server       *grpc.Server

	mu      sync.Mutex
	plugins map[string]*plugin
	// changed is closed and replaced whenever plugins or devices change.
	changed chan struct{}
}

type plugin struct {
	conn    *grpc.ClientConn
	client  deviceplugin.DevicePluginClient
	options *deviceplugin.DevicePluginOptions
	devices []*deviceplugin.Device // as last advertised by ListAndWatch
	inUse   map[string]bool
}

// NewKubelet returns a device manager serving registrations in dir (the
// kubelet's is deviceplugin.DevicePluginPath) and publishing to podResources.
func NewKubelet(dir string, podResources *PodResources) *Kubelet {
	return &Kubelet{dir: dir, podResources: podResources, plugins: map[string]*plugin{}, changed: make(chan struct{})}
}

// Start serves the Registration service on dir/kubelet.sock.
func (k *Kubelet) Start() error {
	l, err := listenUnix(filepath.Join(k.dir, filepath.Base(deviceplugin.KubeletSocket)))
	if err != nil {
		return err
	}
	k.server = grpc.NewServer()
	deviceplugin.RegisterRegistrationServer(k.server, k)
	go func() { _ = k.server.Serve(l) }()
	return nil
}

// Stop stops serving and drops the plugin connections.
func (k *Kubelet) Stop() {
	if k.server != nil {
		k.server.Stop()
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range k.plugins {
		_ = p.conn.Close()
	}
}

// Register implements RegistrationServer: like the kubelet, it checks the
// API version, then dials the plugin's endpoint and follows ListAndWatch.
func (k *Kubelet) Register(_ context.Context, r *deviceplugin.RegisterRequest) (*deviceplugin.Empty, error) {
	if r.Version != deviceplugin.Version {
		return nil, fmt.Errorf("plugin %s: unsupported API version %q, want %q", r.ResourceName, r.Version, deviceplugin.Version)
	}
	if r.ResourceName == "" || r.Endpoint == "" {
		return nil, fmt.Errorf("registration without resource name or endpoint: %+v", r)
	}
	conn, err := grpc.NewClient("unix://"+filepath.Join(k.dir, r.Endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("plugin %s: dial %s: %w", r.ResourceName, r.Endpoint, err)
	}
	p := &plugin{conn: conn, client: deviceplugin.NewDevicePluginClient(conn), options: r.Options, inUse: map[string]bool{}}
	k.mu.Lock()
	if old, ok := k.plugins[r.ResourceName]; ok {
		_ = old.conn.Close() // a re-registering plugin replaces the old endpoint
	}
	k.plugins[r.ResourceName] = p
	k.mu.Unlock()
	go k.watch(r.ResourceName, p)
	return &deviceplugin.Empty{}, nil
}

func (k *Kubelet) watch(resource string, p *plugin) {
	stream, err := p.client.ListAndWatch(context.Background(), &deviceplugin.Empty{})
	if err != nil {
		k.dropPlugin(resource, p)
		return
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			k.dropPlugin(resource, p)
			return
		}
		k.mu.Lock()
		p.devices = resp.Devices
		k.publishAllocatableLocked()
		k.notifyLocked()
		k.mu.Unlock()
	}
}

func (k *Kubelet) dropPlugin(resource string, p *plugin) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.plugins[resource] == p {
		delete(k.plugins, resource)
		k.publishAllocatableLocked()
		k.notifyLocked()
	}
}

func (k *Kubelet) notifyLocked() {
	close(k.changed)
	k.changed = make(chan struct{})
}

func (k *Kubelet) publishAllocatableLocked() {
	var out []*podresourcesv1.ContainerDevices
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range k.plugins {
			if !yield(n) {
				return
			}
		}
	}) {
		if ids := healthyIDs(k.plugins[name]); len(ids) > 0 {
			out = append(out, &podresourcesv1.ContainerDevices{ResourceName: name, DeviceIds: ids})
		}
	}
	k.podResources.SetAllocatable(out...)
}

func healthyIDs(p *plugin) []string {
	var ids []string
	for _, d := range p.devices {
		if d.Health == deviceplugin.Healthy {
			ids = append(ids, d.ID)
		}
	}
	sort.Strings(ids)
	return ids
}

// WaitForDevices waits until the resource's plugin has registered and
// advertised at least n healthy devices, and returns them.
func (k *Kubelet) WaitForDevices(ctx context.Context, resource string, n int) ([]*deviceplugin.Device, error) {
	for {
		k.mu.Lock()
		var devs []*deviceplugin.Device
		if p, ok := k.plugins[resource]; ok {
			devs = p.devices
		}
		changed := k.changed
		k.mu.Unlock()
		healthy := 0
		for _, d := range devs {
			if d.Health == deviceplugin.Healthy {
				healthy++
			}
		}
		if healthy >= n {
			return devs, nil
		}
		select {
		case <-ctx.Done():
			return devs, fmt.Errorf("resource %s: %d healthy device(s) advertised, waited for %d: %w", resource, healthy, n, ctx.Err())
		case <-changed:
		}
	}
}

// Container is a container of a pod and the devices it requests.
type Container struct {
	Name     string
	Requests map[string]int // resource -> count
	// Restartable marks a sidecar: an init container that keeps running, so
	// it keeps its devices and the PodResources API lists it.
	Restartable bool
}

// Pod is what RunPod admits.
type Pod struct {
	Namespace, Name string
	InitContainers  []Container
	Containers      []Container
}

// Allocation is, by container then resource, the devices the kubelet chose
// and what the plugin's Allocate answered for them.
type Allocation map[string]map[string]Assigned

// Assigned is one container's devices of one resource.
type Assigned struct {
	IDs      []string
	Response *deviceplugin.ContainerAllocateResponse
}

// RunPod admits a pod as the kubelet's device manager does: each container
// gets its devices through the plugin's Allocate (after
// GetPreferredAllocation and before PreStartContainer when the plugin asks
// for them); devices of plain init containers are handed on to the app
// containers; then the pod appears in PodResources, sidecars first. Devices
// are taken in ID order so that tests are deterministic.
func (k *Kubelet) RunPod(ctx context.Context, pod Pod) (Allocation, error) {
	alloc := Allocation{}
	reusable := map[string][]string{} // resource -> IDs freed by finished init containers
	entry := &podresourcesv1.PodResources{Namespace: pod.Namespace, Name: pod.Name}
	var sidecars, apps []*podresourcesv1.ContainerResources

	admit := func(c Container, reuse bool) (*podresourcesv1.ContainerResources, error) {
		cr := &podresourcesv1.ContainerResources{Name: c.Name}
		for _, resource := range slices.Sorted(func(yield func(string) bool) {
			for r := range c.Requests {
				if !yield(r) {
					return
				}
			}
		}) {
			n := c.Requests[resource]
			var pool []string
			if reuse {
				take := min(n, len(reusable[resource]))
				pool, reusable[resource] = reusable[resource][:take], reusable[resource][take:]
			}
			resp, ids, err := k.allocate(ctx, pod, c.Name, resource, n, pool)
			if err != nil {
				return nil, err
			}
			if alloc[c.Name] == nil {
				alloc[c.Name] = map[string]Assigned{}
			}
			alloc[c.Name][resource] = Assigned{IDs: ids, Response: resp}
			cr.Devices = append(cr.Devices, &podresourcesv1.ContainerDevices{ResourceName: resource, DeviceIds: ids})
		}
		return cr, nil
	}

	for _, c := range pod.InitContainers {
		cr, err := admit(c, false)
		if err != nil {
			return nil, err
		}
		if c.Restartable {
			sidecars = append(sidecars, cr)
			continue
		}
		for _, d := range cr.Devices {
			reusable[d.ResourceName] = append(reusable[d.ResourceName], d.DeviceIds...)
		}
	}
	for _, c := range pod.Containers {
		cr, err := admit(c, true)
		if err != nil {
			return nil, err
		}
		apps = append(apps, cr)
	}
	entry.Containers = slices.Concat(sidecars, apps)
	k.podResources.AddPod(entry)
	return alloc, nil
}

// allocate picks n devices of resource, starting with those in reuse, and
// asks the plugin to allocate them to one container.
func (k *Kubelet) allocate(ctx context.Context, pod Pod, container, resource string, n int, reuse []string) (*deviceplugin.ContainerAllocateResponse, []string, error) {
	where := fmt.Sprintf("pod %s/%s container %s resource %s", pod.Namespace, pod.Name, container, resource)
	k.mu.Lock()
	p, ok := k.plugins[resource]
	if !ok {
		k.mu.Unlock()
		return nil, nil, fmt.Errorf("%s: no plugin registered", where)
	}
	ids := slices.Clone(reuse)
	var free []string
	for _, id := range healthyIDs(p) {
		if !p.inUse[id] {
			free = append(free, id)
		}
	}
	need := n - len(ids)
	if need > len(free) {
		k.mu.Unlock()
		return nil, nil, fmt.Errorf("%s: %d device(s) requested, %d free", where, n, len(free)+len(ids))
	}
	k.mu.Unlock()

	if need > 0 && p.options.GetGetPreferredAllocationAvailable() {
		pref, err := p.client.GetPreferredAllocation(ctx, &deviceplugin.PreferredAllocationRequest{
			ContainerRequests: []*deviceplugin.ContainerPreferredAllocationRequest{{
				AvailableDeviceIDs: free, MustIncludeDeviceIDs: ids, AllocationSize: int32(n),
			}},
		})
		if err != nil {
			return nil, nil, fmt.Errorf("%s: GetPreferredAllocation: %w", where, err)
		}
		if got := pref.ContainerResponses[0].DeviceIDs; len(got) == n {
			ids = slices.Clone(got)
			need = 0
		}
	}
	ids = append(ids, free[:need]...)
	sort.Strings(ids)

	resp, err := p.client.Allocate(ctx, &deviceplugin.AllocateRequest{
		ContainerRequests: []*deviceplugin.ContainerAllocateRequest{{DevicesIds: ids}},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: Allocate %v: %w", where, ids, err)
	}
	if len(resp.ContainerResponses) != 1 {
		return nil, nil, fmt.Errorf("%s: Allocate answered %d container responses for 1 request", where, len(resp.ContainerResponses))
	}
	if p.options.GetPreStartRequired() {
		if _, err := p.client.PreStartContainer(ctx, &deviceplugin.PreStartContainerRequest{DevicesIds: ids}); err != nil {
			return nil, nil, fmt.Errorf("%s: PreStartContainer: %w", where, err)
		}
	}
	k.mu.Lock()
	for _, id := range ids {
		p.inUse[id] = true
	}
	k.mu.Unlock()
	return resp.ContainerResponses[0], ids, nil
}
