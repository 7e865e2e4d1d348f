package app

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov/sriovtest"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/kubeletsim"
)

var updateDebugGolden = flag.Bool("update-debug-golden", false, "rewrite testdata/debug-mappings-*.golden")

func debugContainer(name, resource string, ids ...string) *podresourcesv1.ContainerResources {
	return &podresourcesv1.ContainerResources{Name: name, Devices: []*podresourcesv1.ContainerDevices{{ResourceName: resource, DeviceIds: ids}}}
}

// serveDebugPodResources serves a node's PodResources on a short socket path.
func serveDebugPodResources(t *testing.T, pods ...*podresourcesv1.PodResources) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dbg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	socket := filepath.Join(dir, "kubelet.sock")
	srv := kubeletsim.NewPodResources()
	srv.SetPods(pods...)
	stop, err := srv.Serve(socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return socket
}

// existingNetdevs is the host's netdevs: every representor of the NIC but
// one whose netdev was deleted.
func existingNetdevs(missing string) func(string) (bool, error) {
	return func(name string) (bool, error) {
		return name != missing && strings.HasPrefix(name, "ens1f"), nil
	}
}

func checkDebugGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateDebugGolden {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update-debug-golden to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func TestDebugMappingsOffline(t *testing.T) {
	const p0, p1 = "example.com/cx6dx_p0", "example.com/cx6dx_p1"
	socket := serveDebugPodResources(t,
		&podresourcesv1.PodResources{Namespace: "tenant-a", Name: "web", Containers: []*podresourcesv1.ContainerResources{
			debugContainer("app", p0, "0000:3b:00.3", "0000:3b:00.2")}},
		&podresourcesv1.PodResources{Namespace: "tenant-b", Name: "db", Containers: []*podresourcesv1.ContainerResources{
			debugContainer("sidecar", p1, "0000:3b:08.2"), debugContainer("app", p0, "0000:3b:00.4")}},
		// Two VFs for one network: mapping it would be a guess.
		&podresourcesv1.PodResources{Namespace: "tenant-b", Name: "broken", Containers: []*podresourcesv1.ContainerResources{
			debugContainer("app", p1, "0000:3b:08.3", "0000:3b:08.4")}},
		// Not in the files and no devices: not reported.
		&podresourcesv1.PodResources{Namespace: "kube-system", Name: "coredns"},
	)
	nic := sriovtest.ConnectX6Dx()
	for _, format := range []string{"table", "json", "yaml"} {
		t.Run(format, func(t *testing.T) {
			var out bytes.Buffer
			o := &debugMappingsOptions{socket: socket, offline: true, output: format,
				files: []string{"testdata/debug-mappings-manifests.yaml"}}
			err := runDebugMappings(context.Background(), o, nic.Fake(), existingNetdevs("ens1f0npf0vf2"), &out)
			if err == nil || err.Error() != "2 attachment problem(s), listed above" {
				t.Errorf("err = %v, want 2 problems (tenant-b/broken, missing representor of tenant-b/db)", err)
			}
			checkDebugGolden(t, "debug-mappings."+format+".golden", out.Bytes())
		})
	}
}

func TestDebugMappingsCommandLine(t *testing.T) {
	socket := serveDebugPodResources(t)
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{
			name:     "socket missing",
			args:     []string{"debug", "mappings", "--offline", "-f", "testdata/debug-mappings-manifests.yaml", "--podresources-socket", "/nonexistent/kubelet.sock"},
			wantCode: exitFailure,
			wantErr:  "Error: pod-resources socket /nonexistent/kubelet.sock does not exist: is the kubelet running on this node, and is --podresources-socket right?",
		},
		{
			name:     "unknown output format",
			args:     []string{"debug", "mappings", "-o", "xml"},
			wantCode: exitBadInput,
			wantErr:  `--output "xml": must be table, json or yaml`,
		},
		{
			name:     "offline without files",
			args:     []string{"debug", "mappings", "--offline"},
			wantCode: exitBadInput,
			wantErr:  "--offline needs at least one -f file",
		},
		{
			name:     "unreadable manifest",
			args:     []string{"debug", "mappings", "--offline", "-f", "testdata/nope.yaml", "--podresources-socket", socket},
			wantCode: exitBadInput,
			wantErr:  "testdata/nope.yaml: no such file or directory",
		},
		{
			name:     "no API server configuration",
			args:     []string{"debug", "mappings", "--kubeconfig", "testdata/no-such-kubeconfig", "--podresources-socket", socket},
			wantCode: exitFailure,
			wantErr:  "API server config (--kubeconfig, $KUBECONFIG or in-cluster; or use --offline -f):",
		},
		{
			name:     "empty node prints the header",
			args:     []string{"debug", "mappings", "--offline", "-f", "testdata/debug-mappings-manifests.yaml", "--podresources-socket", socket},
			wantCode: 0,
			wantOut:  "POD  NETWORK  INTERFACE  RESOURCE  VF PCI  PF PCI  UPLINK  VF  REPRESENTOR  EXISTS\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Main(tc.args, &stdout, &stderr)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d (stderr: %s)", code, tc.wantCode, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.wantErr) {
				t.Errorf("stderr = %q, want it to contain %q", stderr.String(), tc.wantErr)
			}
			if tc.wantOut != "" && stdout.String() != tc.wantOut {
				t.Errorf("stdout = %q, want %q", stdout.String(), tc.wantOut)
			}
		})
	}
}

// TestDebugMappingsFromFilesAlone: the PodResources answer saved by `debug
// podresources` on one machine is mapped elsewhere with no kubelet and no
// /sys; bad files are refused naming the file.
func TestDebugMappingsFromFilesAlone(t *testing.T) {
	const p0, p1 = "example.com/cx6dx_p0", "example.com/cx6dx_p1"
	socket := serveDebugPodResources(t,
		&podresourcesv1.PodResources{Namespace: "tenant-a", Name: "web", Containers: []*podresourcesv1.ContainerResources{
			debugContainer("app", p0, "0000:3b:00.3", "0000:3b:00.2")}},
		&podresourcesv1.PodResources{Namespace: "tenant-b", Name: "broken", Containers: []*podresourcesv1.ContainerResources{
			debugContainer("app", p1, "0000:3b:08.3", "0000:3b:08.4")}},
	)
	saved, errOut, code := runCLI(t, "debug", "podresources", "--podresources-socket", socket)
	if code != 0 {
		t.Fatalf("debug podresources: exit %d: %s", code, errOut)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "podresources.json")
	if err := os.WriteFile(file, []byte(saved), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runCLI(t, "debug", "mappings", "--offline", "-f", "testdata/debug-mappings-manifests.yaml",
		"--podresources-file", file, "--podresources-socket", "/nonexistent/kubelet.sock")
	if code != exitFailure || !strings.Contains(errOut, "1 attachment problem(s)") {
		t.Errorf("exit %d, stderr %q; want 1 and the broken pod", code, errOut)
	}
	checkDebugGolden(t, "debug-mappings-files.table.golden", []byte(out))

	bad := filepath.Join(dir, "bad.json")
	for content, want := range map[string]string{
		`{"pods": []}`:                       "not a PodResources List answer",
		`{"pod_resources": [{"name": "x"}]}`: "pod_resources[0]: namespace and name are required",
	} {
		if err := os.WriteFile(bad, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		_, errOut, code := runCLI(t, "debug", "mappings", "--offline", "-f", "testdata/debug-mappings-manifests.yaml", "--podresources-file", bad)
		if code != exitBadInput || !strings.Contains(errOut, bad) || !strings.Contains(errOut, want) {
			t.Errorf("%s: exit %d, stderr %q; want %d naming the file and %q", content, code, errOut, exitBadInput, want)
		}
	}
}
