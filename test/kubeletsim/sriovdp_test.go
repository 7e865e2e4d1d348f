package kubeletsim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	deviceplugin "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov/sriovtest"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/kubeletsim"
)

const (
	resourcePrefix = "example.com"
	resP0          = resourcePrefix + "/cx6dx_p0" // selected by pfNames: ens1f0np0
	resP1          = resourcePrefix + "/cx6dx_p1" // selected by pciAddresses
	podResSocket   = "/var/lib/kubelet/pod-resources/kubelet.sock"
)

// The test's pods, their networks, and what they request. tenant-a/web has
// two networks on one resource, tenant-b/db one network on each PF, and
// tenant-b/cache gets its VFs through a sidecar and through a plain init
// container whose device passes to the app container.
var testPods = []struct {
	pod      kubeletsim.Pod
	networks string
}{
	{
		pod: kubeletsim.Pod{Namespace: "tenant-a", Name: "web", Containers: []kubeletsim.Container{
			{Name: "app", Requests: map[string]int{resP0: 2}}}},
		networks: "sriov-a,sriov-b",
	},
	{
		pod: kubeletsim.Pod{Namespace: "tenant-b", Name: "db", Containers: []kubeletsim.Container{
			{Name: "app", Requests: map[string]int{resP0: 1, resP1: 1}}}},
		networks: `[{"name":"sriov-a","namespace":"tenant-a","interface":"left"},{"name":"sriov-p1","interface":"right"}]`,
	},
	{
		pod: kubeletsim.Pod{Namespace: "tenant-b", Name: "cache",
			InitContainers: []kubeletsim.Container{
				{Name: "proxy", Restartable: true, Requests: map[string]int{resP1: 1}},
				{Name: "setup", Requests: map[string]int{resP0: 1}},
			},
			Containers: []kubeletsim.Container{{Name: "app", Requests: map[string]int{resP0: 1}}}},
		networks: "sriov-p1,tenant-a/sriov-a@data0",
	},
}

const testNADs = `apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: sriov-a, namespace: tenant-a, annotations: {k8s.v1.cni.cncf.io/resourceName: example.com/cx6dx_p0}}
spec: {config: '{"cniVersion":"1.0.0","type":"sriov","name":"sriov-a"}'}
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: sriov-b, namespace: tenant-a, annotations: {k8s.v1.cni.cncf.io/resourceName: example.com/cx6dx_p0}}
spec: {config: '{"cniVersion":"1.0.0","type":"sriov","name":"sriov-b"}'}
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: sriov-p1, namespace: tenant-b, annotations: {k8s.v1.cni.cncf.io/resourceName: example.com/cx6dx_p1}}
spec: {config: '{"cniVersion":"1.0.0","type":"sriov","name":"sriov-p1"}'}
`

// mappingRow is the JSON `debug mappings -o json` prints.
type mappingRow struct {
	Pod               string `json:"pod"`
	Network           string `json:"network"`
	Interface         string `json:"interface"`
	Resource          string `json:"resource"`
	VFPCI             string `json:"vfPCI"`
	PFPCI             string `json:"pfPCI"`
	Uplink            string `json:"uplink"`
	VFIndex           *int   `json:"vfIndex"`
	Representor       string `json:"representor"`
	RepresentorExists bool   `json:"representorExists"`
	Error             string `json:"error"`
}

// TestSRIOVDevicePlugin runs the real sriov-network-device-plugin over the
// fake ConnectX-6 Dx in a private mount+network namespace, with this
// package's kubelet, and checks `debug mappings` end to end.
func TestSRIOVDevicePlugin(t *testing.T) {
	dpBinary := os.Getenv("SRIOVDP_BINARY")
	if dpBinary == "" {
		t.Skip("SRIOVDP_BINARY is not set: `make test-sriovdp` builds the SR-IOV device plugin and runs this test")
	}
	if !sriovtest.InsidePrivateNamespace() && os.Geteuid() == 0 && os.Getenv("MNPTC_BINARY") == "" {
		t.Setenv("MNPTC_BINARY", buildCommand(t))
	}
	if !sriovtest.InPrivateNamespace(t) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// The node: fake sysfs, real netdevs, private kubelet and CNI dirs.
	nic := sriovtest.ConnectX6Dx()
	root := sriovtest.MountSys(t, nic)
	sriovtest.CreateNetdevs(t, nic)
	sriovtest.MountTmpfs(t, "/var/lib/kubelet")
	sriovtest.MountTmpfs(t, "/run/k8s.cni.cncf.io")

	// The kubelet, then the device plugin.
	podRes := kubeletsim.NewPodResources()
	stop, err := podRes.Serve(podResSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	kubelet := kubeletsim.NewKubelet(deviceplugin.DevicePluginPath, podRes)
	if err := kubelet.Start(); err != nil {
		t.Fatal(err)
	}
	defer kubelet.Stop()
	ctx = startDevicePlugin(ctx, t, dpBinary, root)

	// It registers both resources and advertises the VFs its selectors pick.
	wantDevices := map[string][]string{
		resP0: {"0000:3b:00.2", "0000:3b:00.3", "0000:3b:00.4", "0000:3b:00.5"},
		resP1: {"0000:3b:08.2", "0000:3b:08.3"},
	}
	for res, want := range wantDevices {
		devs, err := kubelet.WaitForDevices(ctx, res, len(want))
		if err != nil {
			t.Fatalf("device plugin: %v (%v)", err, context.Cause(ctx))
		}
		var got []string
		for _, d := range devs {
			got = append(got, d.ID)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("resource %s advertises %v, want %v", res, got, want)
		}
	}

	// Admit the pods; Allocate hands each container its PCI addresses.
	assigned := map[string]map[string][]string{} // pod -> resource -> IDs
	for _, tp := range testPods {
		alloc, err := kubelet.RunPod(ctx, tp.pod)
		if err != nil {
			t.Fatal(err)
		}
		name := tp.pod.Namespace + "/" + tp.pod.Name
		assigned[name] = map[string][]string{}
		for container, byRes := range alloc {
			for res, a := range byRes {
				env := "PCIDEVICE_" + strings.NewReplacer(".", "_", "/", "_").Replace(strings.ToUpper(res))
				got := slices.Sorted(slices.Values(strings.Split(a.Response.Envs[env], ",")))
				if !slices.Equal(got, a.IDs) {
					t.Errorf("%s container %s: Allocate of %v answered %s=%q (envs %v)", name, container, a.IDs, env, a.Response.Envs[env], a.Response.Envs)
				}
				for _, id := range a.IDs {
					if !slices.Contains(wantDevices[res], id) {
						t.Errorf("%s container %s: %s is not a device of %s", name, container, id, res)
					}
				}
				assigned[name][res] = append(assigned[name][res], a.IDs...)
			}
		}
	}
	t.Logf("allocations: %v", assigned)

	// The project's client reads them back from the PodResources socket.
	client, err := podresources.New(podResSocket, podresources.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Close() }()
	alloc, err := client.GetAllocatableResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range alloc.Devices {
		if !slices.Equal(d.DeviceIds, wantDevices[d.ResourceName]) {
			t.Errorf("allocatable %s = %v, want %v", d.ResourceName, d.DeviceIds, wantDevices[d.ResourceName])
		}
	}

	// debug mappings, as a user runs it, against the simulator's socket.
	dir := t.TempDir()
	podsFile, nadsFile := filepath.Join(dir, "pods.yaml"), filepath.Join(dir, "nads.yaml")
	writeFile(t, nadsFile, testNADs)
	writeFile(t, podsFile, podManifests())
	args := []string{"debug", "mappings", "--offline", "-f", podsFile, "-f", nadsFile, "--podresources-socket", podResSocket}

	out, stderr, code := runCommand(t, append(args, "-o", "json")...)
	if code != 0 {
		t.Fatalf("debug mappings -o json: exit %d\n%s\n%s", code, stderr, out)
	}
	var rows []mappingRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("debug mappings -o json: %v\n%s", err, out)
	}
	if want := expectedMappings(nic, assigned); !equalRows(rows, want) {
		t.Errorf("debug mappings -o json:\n%s\nwant:\n%s", dumpRows(rows), dumpRows(want))
	}

	table, stderr, code := runCommand(t, args...)
	if code != 0 {
		t.Fatalf("debug mappings: exit %d\n%s", code, stderr)
	}
	t.Logf("debug mappings:\n%s", table)
	for _, r := range expectedMappings(nic, assigned) {
		if !strings.Contains(table, r.Representor) {
			t.Errorf("table does not show representor %s of %s %s", r.Representor, r.Pod, r.Network)
		}
	}

	// Without the socket it says so and fails.
	_, stderr, code = runCommand(t, "debug", "mappings", "--offline", "-f", podsFile, "--podresources-socket", "/var/lib/kubelet/pod-resources/missing.sock")
	if code != 1 || !strings.Contains(stderr, "pod-resources socket /var/lib/kubelet/pod-resources/missing.sock does not exist") {
		t.Errorf("debug mappings without socket: exit %d, stderr %q", code, stderr)
	}
}

// expectedMappings is multus's rule applied by hand: per pod, networks in
// annotation order each take the next of the pod's sorted IDs of their
// resource; the representor comes from the NIC layout.
func expectedMappings(nic sriovtest.NIC, assigned map[string]map[string][]string) []mappingRow {
	type vfInfo struct {
		pf, uplink, rep string
		index           int
	}
	vfs := map[string]vfInfo{}
	for _, pf := range nic.PFs {
		for i, vf := range pf.VFs {
			vfs[vf.PCI] = vfInfo{pf: pf.PCI, uplink: pf.Uplink, rep: vf.Representor, index: i}
		}
	}
	networks := map[string][]struct{ net, ifname, res string }{
		"tenant-a/web":   {{"tenant-a/sriov-a", "net1", resP0}, {"tenant-a/sriov-b", "net2", resP0}},
		"tenant-b/cache": {{"tenant-b/sriov-p1", "net1", resP1}, {"tenant-a/sriov-a", "data0", resP0}},
		"tenant-b/db":    {{"tenant-a/sriov-a", "left", resP0}, {"tenant-b/sriov-p1", "right", resP1}},
	}
	var rows []mappingRow
	for _, pod := range []string{"tenant-a/web", "tenant-b/cache", "tenant-b/db"} {
		next := map[string]int{}
		for _, n := range networks[pod] {
			// A plain init container's device passes on to the app
			// container: both report it, it counts once.
			ids := slices.Compact(slices.Sorted(slices.Values(assigned[pod][n.res])))
			id := ids[next[n.res]]
			next[n.res]++
			vf := vfs[id]
			rows = append(rows, mappingRow{Pod: pod, Network: n.net, Interface: n.ifname, Resource: n.res, VFPCI: id,
				PFPCI: vf.pf, Uplink: vf.uplink, VFIndex: &vf.index, Representor: vf.rep, RepresentorExists: true})
		}
	}
	return rows
}

func equalRows(a, b []mappingRow) bool {
	return slices.EqualFunc(a, b, func(x, y mappingRow) bool {
		xi, yi := -1, -1
		if x.VFIndex != nil {
			xi = *x.VFIndex
		}
		if y.VFIndex != nil {
			yi = *y.VFIndex
		}
		x.VFIndex, y.VFIndex = nil, nil
		return x == y && xi == yi
	})
}

func dumpRows(rows []mappingRow) string {
	var b strings.Builder
	for _, r := range rows {
		idx := -1
		if r.VFIndex != nil {
			idx = *r.VFIndex
		}
		fmt.Fprintf(&b, "%s %s@%s %s %s pf=%s uplink=%s vf=%d rep=%s exists=%v err=%q\n",
			r.Pod, r.Network, r.Interface, r.Resource, r.VFPCI, r.PFPCI, r.Uplink, idx, r.Representor, r.RepresentorExists, r.Error)
	}
	return b.String()
}

func podManifests() string {
	var b strings.Builder
	for _, tp := range testPods {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\n  annotations:\n    k8s.v1.cni.cncf.io/networks: '%s'\nspec:\n  containers:\n  - {name: app, image: app}\n",
			tp.pod.Name, tp.pod.Namespace, tp.networks)
	}
	return b.String()
}

// startDevicePlugin runs the plugin over the fake tree: ghw reads sysfs under
// GHW_CHROOT, and its pcidb reads the PCI names from the chroot's
// /usr/share/misc/pci.ids (ours, from testdata), never from the network.
// The returned context ends if the plugin exits, so that a crash fails the
// test at once rather than at its timeout.
func startDevicePlugin(ctx context.Context, t *testing.T, binary, root string) context.Context {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "sriovdp.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	pciIDs, err := os.ReadFile("testdata/pci.ids")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "usr/share/misc"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(root, "usr/share/misc/pci.ids"), string(pciIDs))
	config, _ := filepath.Abs("testdata/sriovdp-config.json")
	cmd := exec.Command(binary, "-config-file", config, "-resource-prefix", resourcePrefix, "-logtostderr", "-v", "3")
	cmd.Env = append(os.Environ(), "GHW_CHROOT="+root, "PCIDB_DISABLE_NETWORK_FETCH=1")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", binary, err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	exited := make(chan struct{})
	go func() {
		err := cmd.Wait()
		cancel(fmt.Errorf("sriovdp exited: %w", err))
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		_ = logFile.Close()
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("sriovdp log:\n%s", log)
		}
	})
	return ctx
}

// buildCommand builds multi-networkpolicy-tc; `make test-sriovdp` passes
// its own build in MNPTC_BINARY instead.
func buildCommand(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	out := filepath.Join(t.TempDir(), "multi-networkpolicy-tc")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/multi-networkpolicy-tc")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

func runCommand(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(os.Getenv("MNPTC_BINARY"), args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("run %s: %v", cmd, err)
	}
	return o.String(), e.String(), code
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
