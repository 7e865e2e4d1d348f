package app

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/preflight"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov/sriovtest"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/kubeletsim"
)

// offloadHost is a node with the sriovtest ConnectX-6 Dx: PF0 tuned
// (switchdev, smfs, hw-tc-offload on, representors on br0 with an
// offloaded FDB entry), PF1 in switchdev with hw-tc-offload off on one
// representor and dmfs; plus a netdevsim eswitch and a veth on br9, for
// --pf.
func offloadHost(t *testing.T) *preflight.Fake {
	t.Helper()
	nic := sriovtest.ConnectX6Dx()
	root := t.TempDir()
	if err := nic.Write(root); err != nil {
		t.Fatal(err)
	}
	f := preflight.NewFake(filepath.Join(root, "sys"), "6.1.0-13-amd64")
	on := preflight.Feature{Active: true, Changeable: true}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(f.AddVirtual("br0", "bridge"))
	for i, pf := range nic.PFs {
		f.SetEswitchMode("pci/"+pf.PCI, "switchdev")
		f.SetParam("pci/"+pf.PCI, "flow_steering_mode", []string{"smfs", "dmfs"}[i])
		f.SetTCOffload(pf.Uplink, on)
		for _, vf := range pf.VFs {
			f.SetTCOffload(vf.Representor, on)
			must(f.Enslave(vf.Representor, "br0"))
		}
	}
	f.SetTCOffload("ens1f1npf1vf1", preflight.Feature{Changeable: true})
	f.SetOffloadedFDB("br0", "ens1f0npf0vf0", 2)
	f.SetOffloadedFDB("br0", "ens1f1npf1vf0", 1)
	_, err := f.AddNetdevsim(1, 2)
	must(err)
	must(f.AddVirtual("br9", "bridge"))
	for _, n := range []string{"eni1npf0vf0", "eni1npf0vf1"} {
		must(f.Enslave(n, "br9"))
	}
	must(f.AddVirtual("veth0", "veth"))
	must(f.Enslave("veth0", "br9"))
	return f
}

// serveAllocatable serves a kubelet whose GetAllocatableResources lists
// the devices.
func serveAllocatable(t *testing.T, devs ...*podresourcesv1.ContainerDevices) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dbo")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	socket := filepath.Join(dir, "kubelet.sock")
	srv := kubeletsim.NewPodResources()
	srv.SetAllocatable(devs...)
	stop, err := srv.Serve(socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return socket
}

func TestDebugOffload(t *testing.T) {
	socket := serveAllocatable(t,
		&podresourcesv1.ContainerDevices{ResourceName: "example.com/cx6dx_p0", DeviceIds: []string{"0000:3b:00.2", "0000:3b:00.3", "0000:3b:00.4", "0000:3b:00.5"}},
		&podresourcesv1.ContainerDevices{ResourceName: "example.com/cx6dx_p1", DeviceIds: []string{"0000:3b:08.2", "0000:3b:08.3"}},
		// Another plugin's device: no VF, no PF to inspect.
		&podresourcesv1.ContainerDevices{ResourceName: "example.com/gpu", DeviceIds: []string{"gpu-0"}},
	)
	for _, tc := range []struct {
		golden string
		o      debugOffloadOptions
	}{
		{"debug-offload.table.golden", debugOffloadOptions{socket: socket, output: "table", profile: "auto", tcOffload: "auto"}},
		{"debug-offload.json.golden", debugOffloadOptions{socket: socket, output: "json", profile: "auto", tcOffload: "auto"}},
		{"debug-offload-pf.table.golden", debugOffloadOptions{pfs: []string{"eni1np1", "veth0", "0000:3b:00.0"}, output: "table", profile: "auto", tcOffload: "auto"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			var out bytes.Buffer
			err := runDebugOffload(context.Background(), &tc.o, offloadHost(t), kubeletAllocatable(tc.o.socket), &out)
			var ee *ExitError
			if !errors.As(err, &ee) || ee.Code != exitNotInHardware {
				t.Errorf("err = %v, want exit %d (a PF in software only)", err, exitNotInHardware)
			}
			checkDebugGolden(t, tc.golden, out.Bytes())
		})
	}
}

func TestDebugOffloadAllInHardware(t *testing.T) {
	var out bytes.Buffer
	o := &debugOffloadOptions{pfs: []string{"0000:3b:00.0"}, output: "table", profile: "auto", tcOffload: "auto"}
	if err := runDebugOffload(context.Background(), o, offloadHost(t), nil, &out); err != nil {
		t.Fatalf("err = %v, want none:\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "enforced in hardware") || strings.Contains(out.String(), "fix:") {
		t.Errorf("output:\n%s", out.String())
	}
}

func TestDebugOffloadCommandLine(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"socket missing", []string{"debug", "offload", "--podresources-socket", "/nonexistent/kubelet.sock"}, exitFailure,
			"Error: pod-resources socket /nonexistent/kubelet.sock does not exist"},
		{"unknown output format", []string{"debug", "offload", "-o", "yaml"}, exitBadInput, `--output "yaml": must be table or json`},
		{"bad profile", []string{"debug", "offload", "--offload-profile", "cx9"}, exitBadInput, `--offload-profile="cx9"`},
		{"bad offload mode", []string{"debug", "offload", "--tc-offload", "never"}, exitBadInput, "--tc-offload"},
		{"unknown PF", []string{"debug", "offload", "--pf", "nonexistent0"}, exitFailure, "PF nonexistent0: PF nonexistent0: no such netdev"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runCLI(t, tc.args...)
			if code != tc.wantCode || !strings.Contains(stderr, tc.wantErr) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, tc.wantCode, tc.wantErr)
			}
		})
	}
}
