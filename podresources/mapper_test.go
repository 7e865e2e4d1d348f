package podresources_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
)

const (
	resP0 = "example.com/cx6dx_p0"
	resP1 = "example.com/cx6dx_p1"
)

// nadStore is a lookup over a fixed set of NADs, failing like a lister on a
// missing one.
type nadStore map[nadKey]*nadv1.NetworkAttachmentDefinition

type nadKey struct{ namespace, name string }

func (s nadStore) lookup(ns, name string) (*nadv1.NetworkAttachmentDefinition, error) {
	if n, ok := s[nadKey{ns, name}]; ok {
		return n, nil
	}
	return nil, fmt.Errorf("networkattachmentdefinition %s/%s not found", ns, name)
}

func nad(ns, name, resource string) *nadv1.NetworkAttachmentDefinition {
	n := &nadv1.NetworkAttachmentDefinition{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if resource != "" {
		n.Annotations = map[string]string{podresources.ResourceNameAnnotation: resource}
	}
	return n
}

var nads = nadStore{
	{"tenant-a", "sriov-a"}:  nad("tenant-a", "sriov-a", resP0),
	{"tenant-a", "sriov-b"}:  nad("tenant-a", "sriov-b", resP0),
	{"tenant-a", "sriov-c"}:  nad("tenant-a", "sriov-c", resP1),
	{"tenant-a", "macvlan"}:  nad("tenant-a", "macvlan", ""),
	{"shared", "sriov-edge"}: nad("shared", "sriov-edge", resP1),
}

func annotatedPod(ns, name, networks string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if networks != "" {
		p.Annotations = map[string]string{nadv1.NetworkAttachmentAnnot: networks}
	}
	return p
}

func att(network, ifname, resource, dev string) podresources.Attachment {
	ns, name, _ := strings.Cut(network, "/")
	return podresources.Attachment{PodNamespace: "tenant-a", PodName: "web", NetworkNamespace: ns, NetworkName: name,
		Interface: ifname, ResourceName: resource, DeviceID: dev}
}

func TestMapAttachments(t *testing.T) {
	// Every case runs through MapAttachments and through one Mapper shared
	// by all cases, twice, so that the memo must give the same answers.
	mapper := podresources.NewMapper()
	mappers := map[string]func(*corev1.Pod, podresources.NADLookup, *podresourcesv1.PodResources) ([]podresources.Attachment, error){
		"MapAttachments": podresources.MapAttachments,
		"Mapper":         mapper.Map,
		"Mapper again":   mapper.Map,
	}
	for _, tc := range []struct {
		name     string
		networks string
		res      *podresourcesv1.PodResources
		want     []podresources.Attachment
		wantErr  string // substring; ErrDeviceCountMismatch is checked when it says "device count"
	}{
		{
			name:     "two networks on one resource take the sorted IDs in annotation order",
			networks: "sriov-b, sriov-a",
			res:      pod("tenant-a", "web", container("app", devices(resP0, "0000:3b:00.4", "0000:3b:00.2"))),
			want: []podresources.Attachment{
				att("tenant-a/sriov-b", "net1", resP0, "0000:3b:00.2"),
				att("tenant-a/sriov-a", "net2", resP0, "0000:3b:00.4"),
			},
		},
		{
			name:     "networks on two resources, comma form with namespace and ifname",
			networks: "tenant-a/sriov-a@left,shared/sriov-edge@right",
			res: pod("tenant-a", "web", container("app",
				devices(resP1, "0000:3b:08.3"), devices(resP0, "0000:3b:00.5"))),
			want: []podresources.Attachment{
				att("tenant-a/sriov-a", "left", resP0, "0000:3b:00.5"),
				att("shared/sriov-edge", "right", resP1, "0000:3b:08.3"),
			},
		},
		{
			name:     "JSON form with interface and namespace",
			networks: `[{"name":"sriov-edge","namespace":"shared"},{"name":"sriov-a","interface":"data0"}]`,
			res: pod("tenant-a", "web", container("app",
				devices(resP0, "0000:3b:00.3"), devices(resP1, "0000:3b:08.2"))),
			want: []podresources.Attachment{
				att("shared/sriov-edge", "net1", resP1, "0000:3b:08.2"),
				att("tenant-a/sriov-a", "data0", resP0, "0000:3b:00.3"),
			},
		},
		{
			name:     "a network without resource keeps its position for netN",
			networks: "macvlan,sriov-a,macvlan,sriov-c",
			res: pod("tenant-a", "web", container("app",
				devices(resP0, "0000:3b:00.2"), devices(resP1, "0000:3b:08.2"))),
			want: []podresources.Attachment{
				att("tenant-a/sriov-a", "net2", resP0, "0000:3b:00.2"),
				att("tenant-a/sriov-c", "net4", resP1, "0000:3b:08.2"),
			},
		},
		{
			name:     "devices gathered across containers, init sidecar included",
			networks: "sriov-a,sriov-b",
			res: pod("tenant-a", "web",
				container("istio-init-sidecar", devices(resP0, "0000:3b:00.5")),
				container("app", devices(resP0, "0000:3b:00.3"))),
			want: []podresources.Attachment{
				att("tenant-a/sriov-a", "net1", resP0, "0000:3b:00.3"),
				att("tenant-a/sriov-b", "net2", resP0, "0000:3b:00.5"),
			},
		},
		{
			name:     "a device reported for two containers counts once",
			networks: "sriov-a",
			res: pod("tenant-a", "web",
				container("init", devices(resP0, "0000:3b:00.2")),
				container("app", devices(resP0, "0000:3b:00.2"))),
			want: []podresources.Attachment{att("tenant-a/sriov-a", "net1", resP0, "0000:3b:00.2")},
		},
		{
			name:     "devices of resources no network uses are ignored",
			networks: "sriov-a",
			res: pod("tenant-a", "web", container("app",
				devices("nvidia.com/gpu", "GPU-1"), devices(resP0, "0000:3b:00.2"))),
			want: []podresources.Attachment{att("tenant-a/sriov-a", "net1", resP0, "0000:3b:00.2")},
		},
		{
			name:     "no SR-IOV network: nothing to map, nothing required",
			networks: "macvlan",
			res:      pod("tenant-a", "web", container("app")),
		},
		{
			name: "no annotation",
			res:  pod("tenant-a", "web", container("app", devices(resP0, "0000:3b:00.2"))),
		},
		{
			name:     "fewer devices than networks",
			networks: "sriov-a,sriov-b",
			res:      pod("tenant-a", "web", container("app", devices(resP0, "0000:3b:00.2"))),
			wantErr:  "pod tenant-a/web: resource example.com/cx6dx_p0: device count does not match networks: 2 network(s) (tenant-a/sriov-a@net1, tenant-a/sriov-b@net2) but the kubelet assigned 1 device(s) [0000:3b:00.2]",
		},
		{
			name:     "more devices than networks",
			networks: "sriov-a",
			res:      pod("tenant-a", "web", container("app", devices(resP0, "0000:3b:00.2", "0000:3b:00.3"))),
			wantErr:  "pod tenant-a/web: resource example.com/cx6dx_p0: device count",
		},
		{
			name:     "pod absent from PodResources",
			networks: "sriov-c",
			wantErr:  "pod tenant-a/web: resource example.com/cx6dx_p1: device count does not match networks: 1 network(s) (tenant-a/sriov-c@net1) but the kubelet assigned 0 device(s) []",
		},
		{
			name:     "missing NAD",
			networks: "sriov-a,nope",
			res:      pod("tenant-a", "web", container("app", devices(resP0, "0000:3b:00.2"))),
			wantErr:  "pod tenant-a/web: network tenant-a/nope: networkattachmentdefinition tenant-a/nope not found",
		},
		{
			name:     "malformed annotation",
			networks: "sriov-a@eth0@eth1",
			wantErr:  "pod tenant-a/web: annotation k8s.v1.cni.cncf.io/networks:",
		},
		{
			name:     "malformed JSON annotation",
			networks: `[{"name":`,
			wantErr:  "pod tenant-a/web: annotation k8s.v1.cni.cncf.io/networks:",
		},
	} {
		for _, mapName := range []string{"MapAttachments", "Mapper", "Mapper again"} {
			t.Run(tc.name+"/"+mapName, func(t *testing.T) {
				got, err := mappers[mapName](annotatedPod("tenant-a", "web", tc.networks), nads.lookup, tc.res)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("err = %v, want it to contain %q", err, tc.wantErr)
					}
					if strings.Contains(tc.wantErr, "device count") && !errors.Is(err, podresources.ErrDeviceCountMismatch) {
						t.Errorf("err = %v, want ErrDeviceCountMismatch", err)
					}
					if got != nil {
						t.Errorf("on error, got attachments %v; want none", got)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(got, tc.want) {
					t.Errorf("got\n%v\nwant\n%v", got, tc.want)
				}
			})
		}
	}
}

// TestMapAttachmentsDoesNotModifyInput guards the sort: it must not reorder
// the caller's PodResources answer, which may be shared.
func TestMapAttachmentsDoesNotModifyInput(t *testing.T) {
	res := pod("tenant-a", "web", container("app", devices(resP0, "0000:3b:00.4", "0000:3b:00.2")))
	if _, err := podresources.MapAttachments(annotatedPod("tenant-a", "web", "sriov-a,sriov-b"), nads.lookup, res); err != nil {
		t.Fatal(err)
	}
	if got := res.Containers[0].Devices[0].DeviceIds; got[0] != "0000:3b:00.4" {
		t.Errorf("input device IDs reordered to %v", got)
	}
}
