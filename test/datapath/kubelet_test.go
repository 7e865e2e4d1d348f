package datapath

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/kubeletsim"
)

func kubeletSocket(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "prs") // short: sun_path is 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, "kubelet.sock")
}

// TestKubeletNote: the VFs a kubelet (the project's simulator, speaking
// PodResources v1 on a unix socket) lists among pods' devices are in use;
// those it may hand out are named in the report; a socket that does not
// answer refuses the PF (fail closed); no socket at all is "not checked".
func TestKubeletNote(t *testing.T) {
	socket := kubeletSocket(t)
	srv := kubeletsim.NewPodResources()
	dev := func(ids ...string) *podresourcesv1.ContainerDevices {
		return &podresourcesv1.ContainerDevices{ResourceName: "example.com/cx6", DeviceIds: ids}
	}
	srv.SetPods(&podresourcesv1.PodResources{Namespace: "tenant-a", Name: "web", Containers: []*podresourcesv1.ContainerResources{
		{Name: "app", Devices: []*podresourcesv1.ContainerDevices{dev("0000:03:00.3")}}}})
	srv.SetAllocatable(dev("0000:03:00.2", "0000:03:00.3"))
	stop, err := srv.Serve(socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(PodResourcesEnv, socket)
	uses := []VFUse{{VF: 0, PCI: "0000:03:00.2", Driver: "mlx5_core", PFDriver: "mlx5_core", Netdevs: []string{"v0"}},
		{VF: 1, PCI: "0000:03:00.3", Driver: "mlx5_core", PFDriver: "mlx5_core", Netdevs: []string{"v1"}}}
	note, err := kubeletNote(uses)
	if err != nil {
		t.Fatal(err)
	}
	if want := "no VF of the PF allocated to a pod (" + socket + "); the kubelet may hand out 0000:03:00.2, 0000:03:00.3 during the run: cordon the node"; note != want {
		t.Errorf("note %q, want %q", note, want)
	}
	if uses[0].AllocatedTo != nil || !reflect.DeepEqual(uses[1].AllocatedTo, []string{"tenant-a/web"}) {
		t.Errorf("allocated: VF 0 %v, VF 1 %v", uses[0].AllocatedTo, uses[1].AllocatedTo)
	}
	if err := RefuseInUse("ens1f0", uses); err == nil || !strings.Contains(err.Error(), "VF 1: allocated by the kubelet to tenant-a/web") {
		t.Errorf("refusal: %v", err)
	}

	stop()
	_ = os.Remove(socket)
	if _, err := kubeletNote(uses); err == nil || !strings.Contains(err.Error(), socket) {
		t.Errorf("a named socket that is gone: %v, want an error naming it", err)
	}
	t.Setenv(PodResourcesEnv, "")
	saved := defaultPodResourcesSockets
	t.Cleanup(func() { defaultPodResourcesSockets = saved })
	defaultPodResourcesSockets = []string{socket}
	if note, err := kubeletNote(uses); err != nil || !strings.HasPrefix(note, "not checked") {
		t.Errorf("no kubelet: %q, %v", note, err)
	}
}
