package kubeletsim_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	deviceplugin "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/kubeletsim"
)

// vfPlugin is a minimal device plugin in the SR-IOV plugin's manner: it
// advertises PCI addresses and answers Allocate with PCIDEVICE_<RESOURCE>.
// It checks what a real plugin checks: that allocated IDs are its own.
type vfPlugin struct {
	deviceplugin.UnimplementedDevicePluginServer
	env string
	ids []string
}

func (p *vfPlugin) GetDevicePluginOptions(context.Context, *deviceplugin.Empty) (*deviceplugin.DevicePluginOptions, error) {
	return &deviceplugin.DevicePluginOptions{}, nil
}

func (p *vfPlugin) ListAndWatch(_ *deviceplugin.Empty, s deviceplugin.DevicePlugin_ListAndWatchServer) error {
	var devs []*deviceplugin.Device
	for _, id := range p.ids {
		devs = append(devs, &deviceplugin.Device{ID: id, Health: deviceplugin.Healthy})
	}
	if err := s.Send(&deviceplugin.ListAndWatchResponse{Devices: devs}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (p *vfPlugin) Allocate(_ context.Context, r *deviceplugin.AllocateRequest) (*deviceplugin.AllocateResponse, error) {
	resp := &deviceplugin.AllocateResponse{}
	for _, c := range r.ContainerRequests {
		for _, id := range c.DevicesIds {
			if !slices.Contains(p.ids, id) {
				return nil, fmt.Errorf("device %s is not one of mine", id)
			}
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &deviceplugin.ContainerAllocateResponse{
			Envs: map[string]string{p.env: strings.Join(c.DevicesIds, ",")},
		})
	}
	return resp, nil
}

// startPlugin serves the plugin in dir and registers it with the kubelet
// there, over real gRPC, as a device plugin does at start.
func startPlugin(t *testing.T, dir, resource string, p *vfPlugin) {
	t.Helper()
	endpoint := strings.ReplaceAll(resource, "/", "_") + ".sock"
	srv := grpc.NewServer()
	deviceplugin.RegisterDevicePluginServer(srv, p)
	l, err := net.Listen("unix", filepath.Join(dir, endpoint))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)

	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "kubelet.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = deviceplugin.NewRegistrationClient(conn).Register(ctx, &deviceplugin.RegisterRequest{
		Version: deviceplugin.Version, Endpoint: endpoint, ResourceName: resource})
	if err != nil {
		t.Fatalf("register %s: %v", resource, err)
	}
}

func TestRunPod(t *testing.T) {
	dir, err := os.MkdirTemp("", "dp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	podRes := kubeletsim.NewPodResources()
	k := kubeletsim.NewKubelet(dir, podRes)
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	startPlugin(t, dir, "example.com/vf", &vfPlugin{env: "PCIDEVICE_EXAMPLE_COM_VF",
		ids: []string{"0000:3b:00.5", "0000:3b:00.2", "0000:3b:00.4", "0000:3b:00.3"}})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := k.WaitForDevices(ctx, "example.com/vf", 4); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, err := k.WaitForDevices(short, "example.com/none", 1); err == nil || !strings.Contains(err.Error(), "resource example.com/none: 0 healthy device(s) advertised, waited for 1") {
		t.Fatalf("WaitForDevices of an unregistered resource: err = %v", err)
	}

	alloc, err := k.RunPod(ctx, kubeletsim.Pod{Namespace: "ns", Name: "p",
		InitContainers: []kubeletsim.Container{
			{Name: "sidecar", Restartable: true, Requests: map[string]int{"example.com/vf": 1}},
			{Name: "setup", Requests: map[string]int{"example.com/vf": 1}},
		},
		Containers: []kubeletsim.Container{{Name: "app", Requests: map[string]int{"example.com/vf": 2}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Devices go out in ID order; the app reuses the plain init container's.
	for container, want := range map[string]string{
		"sidecar": "0000:3b:00.2", "setup": "0000:3b:00.3", "app": "0000:3b:00.3,0000:3b:00.4",
	} {
		if got := alloc[container]["example.com/vf"].Response.Envs["PCIDEVICE_EXAMPLE_COM_VF"]; got != want {
			t.Errorf("container %s got %s, want %s", container, got, want)
		}
	}
	// Like the kubelet, PodResources lists sidecars first and leaves out
	// plain init containers.
	pods, err := podRes.List(ctx, &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range pods.PodResources[0].Containers {
		got = append(got, c.Name+"="+strings.Join(c.Devices[0].DeviceIds, ","))
	}
	if want := []string{"sidecar=0000:3b:00.2", "app=0000:3b:00.3,0000:3b:00.4"}; !slices.Equal(got, want) {
		t.Errorf("PodResources containers = %v, want %v", got, want)
	}
	allocatable, err := podRes.GetAllocatableResources(ctx, &podresourcesv1.AllocatableResourcesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := allocatable.Devices[0].DeviceIds; len(got) != 4 {
		t.Errorf("allocatable = %v", got)
	}

	// One device is left: a pod asking for two is refused, naming itself.
	_, err = k.RunPod(ctx, kubeletsim.Pod{Namespace: "ns", Name: "greedy",
		Containers: []kubeletsim.Container{{Name: "app", Requests: map[string]int{"example.com/vf": 2}}}})
	if err == nil || !strings.Contains(err.Error(), "pod ns/greedy container app resource example.com/vf: 2 device(s) requested, 1 free") {
		t.Errorf("over-allocation: err = %v", err)
	}
}

func TestRegisterRejectsWrongVersion(t *testing.T) {
	dir, err := os.MkdirTemp("", "dp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	k := kubeletsim.NewKubelet(dir, kubeletsim.NewPodResources())
	_, err = k.Register(context.Background(), &deviceplugin.RegisterRequest{Version: "v1alpha", Endpoint: "x.sock", ResourceName: "example.com/vf"})
	if err == nil || !strings.Contains(err.Error(), `unsupported API version "v1alpha"`) {
		t.Errorf("Register(v1alpha) = %v", err)
	}
}
