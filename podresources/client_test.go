package podresources_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/kubeletsim"
)

func pod(ns, name string, containers ...*podresourcesv1.ContainerResources) *podresourcesv1.PodResources {
	return &podresourcesv1.PodResources{Namespace: ns, Name: name, Containers: containers}
}

func container(name string, devs ...*podresourcesv1.ContainerDevices) *podresourcesv1.ContainerResources {
	return &podresourcesv1.ContainerResources{Name: name, Devices: devs}
}

func devices(resource string, ids ...string) *podresourcesv1.ContainerDevices {
	return &podresourcesv1.ContainerDevices{ResourceName: resource, DeviceIds: ids}
}

// socketPath returns a socket path short enough for sun_path (108 bytes),
// which t.TempDir() under a long test name may not be.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "prs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, "kubelet.sock")
}

func serve(t *testing.T, srv *kubeletsim.PodResources, socket string) func() {
	t.Helper()
	stop, err := srv.Serve(socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return stop
}

func newClient(t *testing.T, socket string, opts podresources.Options) *podresources.Client {
	t.Helper()
	c, err := podresources.New(socket, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func names(pods []*podresourcesv1.PodResources) string {
	var s []string
	for _, p := range pods {
		s = append(s, p.Namespace+"/"+p.Name)
	}
	return strings.Join(s, ",")
}

func TestListGetAllocatable(t *testing.T) {
	socket := socketPath(t)
	srv := kubeletsim.NewPodResources()
	srv.SetPods(
		pod("tenant-a", "web", container("app", devices("example.com/cx6dx_p0", "0000:3b:00.2"))),
		pod("tenant-b", "db", container("app")),
	)
	srv.SetAllocatable(devices("example.com/cx6dx_p0", "0000:3b:00.2", "0000:3b:00.3"))
	serve(t, srv, socket)
	c := newClient(t, socket, podresources.Options{})
	ctx := ctxTimeout(t, 10*time.Second)

	pods, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(pods); got != "tenant-a/web,tenant-b/db" {
		t.Errorf("List = %s", got)
	}
	p, err := c.Get(ctx, "tenant-a", "web")
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Containers[0].Devices[0].DeviceIds; len(got) != 1 || got[0] != "0000:3b:00.2" {
		t.Errorf("Get devices = %v", got)
	}
	if _, err := c.Get(ctx, "tenant-a", "gone"); !errors.Is(err, podresources.ErrPodNotFound) {
		t.Errorf("Get of unknown pod: err = %v, want ErrPodNotFound", err)
	}
	alloc, err := c.GetAllocatableResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := alloc.Devices[0].DeviceIds; len(got) != 2 {
		t.Errorf("allocatable = %v", got)
	}
}

func TestGetFallsBackToList(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode kubeletsim.GetMode
	}{
		{"kubelet without Get", kubeletsim.GetUnimplemented},
		{"Get feature gate off", kubeletsim.GetDisabled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			socket := socketPath(t)
			srv := kubeletsim.NewPodResources()
			srv.SetGetMode(tc.mode)
			srv.SetPods(pod("ns", "a", container("c", devices("r", "1"))), pod("ns", "b"))
			serve(t, srv, socket)
			c := newClient(t, socket, podresources.Options{})
			ctx := ctxTimeout(t, 10*time.Second)

			p, err := c.Get(ctx, "ns", "a")
			if err != nil {
				t.Fatal(err)
			}
			if p.Name != "a" || p.Containers[0].Devices[0].DeviceIds[0] != "1" {
				t.Errorf("Get = %v", p)
			}
			if got := srv.Served(); got != 2 {
				t.Errorf("first Get: server answered %d calls, want 2 (Get, then List)", got)
			}
			// The client remembers: the next Get is a single List.
			if _, err := c.Get(ctx, "ns", "missing"); !errors.Is(err, podresources.ErrPodNotFound) {
				t.Errorf("Get of unknown pod: err = %v, want ErrPodNotFound", err)
			}
			if got := srv.Served(); got != 3 {
				t.Errorf("second Get: server answered %d calls in all, want 3", got)
			}
		})
	}
}

func TestSocketAbsentAtStart(t *testing.T) {
	socket := socketPath(t)
	c := newClient(t, socket, podresources.Options{})
	srv := kubeletsim.NewPodResources()
	srv.SetPods(pod("ns", "late"))
	go func() {
		time.Sleep(300 * time.Millisecond)
		stop, err := srv.Serve(socket)
		if err == nil {
			t.Cleanup(stop)
		}
	}()
	pods, err := c.List(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatalf("List while the kubelet starts: %v", err)
	}
	if got := names(pods); got != "ns/late" {
		t.Errorf("List = %s", got)
	}
}

func TestSocketNeverAppears(t *testing.T) {
	socket := socketPath(t)
	c := newClient(t, socket, podresources.Options{})
	_, err := c.List(ctxTimeout(t, 500*time.Millisecond))
	if err == nil || !strings.Contains(err.Error(), socket) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("List without kubelet: err = %v, want deadline exceeded naming %s", err, socket)
	}

	limited := newClient(t, socket, podresources.Options{Backoff: wait.Backoff{Duration: time.Millisecond, Factor: 1, Steps: 3}})
	_, err = limited.List(ctxTimeout(t, 10*time.Second))
	if err == nil || !strings.Contains(err.Error(), "giving up") {
		t.Fatalf("List with 3 attempts: err = %v, want giving up", err)
	}
}

func TestKubeletRestart(t *testing.T) {
	socket := socketPath(t)
	before := kubeletsim.NewPodResources()
	before.SetPods(pod("ns", "before"))
	stop := serve(t, before, socket)
	c := newClient(t, socket, podresources.Options{})
	ctx := ctxTimeout(t, 20*time.Second)
	if pods, err := c.List(ctx); err != nil || names(pods) != "ns/before" {
		t.Fatalf("List before restart = %s, %v", names(pods), err)
	}

	// The kubelet goes away (socket removed) and comes back 300ms later with
	// a new socket file; a List issued in between waits for it.
	stop()
	after := kubeletsim.NewPodResources()
	after.SetPods(pod("ns", "after"))
	go func() {
		time.Sleep(300 * time.Millisecond)
		if stop, err := after.Serve(socket); err == nil {
			t.Cleanup(stop)
		}
	}()
	pods, err := c.List(ctx)
	if err != nil {
		t.Fatalf("List across restart: %v", err)
	}
	if got := names(pods); got != "ns/after" {
		t.Errorf("List after restart = %s, want ns/after", got)
	}
}

func TestRateLimitBacksOff(t *testing.T) {
	socket := socketPath(t)
	srv := kubeletsim.NewPodResources()
	srv.SetPods(pod("ns", "a"))
	// A stingier limit than the kubelet's 100 qps / burst 10, so that the
	// test reaches it without many calls.
	srv.LimitRate(20, 5)
	serve(t, srv, socket)
	c := newClient(t, socket, podresources.Options{})
	ctx := ctxTimeout(t, 30*time.Second)

	const workers, perWorker = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perWorker {
				if _, err := c.List(ctx); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("List under rate limit: %v", err)
	}
	if got := srv.Served(); got != workers*perWorker {
		t.Errorf("served %d calls, want %d", got, workers*perWorker)
	}
	if srv.Rejected() == 0 {
		t.Fatalf("the rate limit was never hit; the test proves nothing")
	}
	// Backing off from 100ms means few retries per call; retrying at once
	// would be refused hundreds of times.
	if r := srv.Rejected(); r > 2*workers*perWorker {
		t.Errorf("%d calls refused for %d answered: the client hammers the kubelet", r, workers*perWorker)
	}
}

func TestLargeListWithin16MiB(t *testing.T) {
	socket := socketPath(t)
	srv := kubeletsim.NewPodResources()
	// ~6 MiB: over gRPC's default 4 MiB receive limit, under the kubelet's 16.
	var pods []*podresourcesv1.PodResources
	for i := range 1500 {
		ids := make([]string, 64)
		for j := range ids {
			ids[j] = fmt.Sprintf("%060d", i*64+j)
		}
		pods = append(pods, pod("ns", fmt.Sprintf("p%d", i), container("c", devices("example.com/r", ids...))))
	}
	srv.SetPods(pods...)
	serve(t, srv, socket)
	c := newClient(t, socket, podresources.Options{})
	got, err := c.List(ctxTimeout(t, 20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1500 {
		t.Errorf("List returned %d pods, want 1500", len(got))
	}
}

func TestCheckSocket(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "kubelet.sock")
	if err := podresources.CheckSocket(missing); err == nil || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), missing) {
		t.Errorf("CheckSocket(missing) = %v", err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := podresources.CheckSocket(file); err == nil || !strings.Contains(err.Error(), "not a unix socket") {
		t.Errorf("CheckSocket(regular file) = %v", err)
	}
	socket := socketPath(t)
	serve(t, kubeletsim.NewPodResources(), socket)
	if err := podresources.CheckSocket(socket); err != nil {
		t.Errorf("CheckSocket(live socket) = %v", err)
	}
}
