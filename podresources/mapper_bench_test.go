package podresources_test

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
)

// BenchmarkMapAttachmentsNode maps a full node: 110 pods (the kubelet's
// default max-pods), each with four SR-IOV networks, two per resource, so
// 440 devices in the PodResources answer. One op is the whole node.
// "memo" is the agent's steady state (a long-lived Mapper, annotations
// parsed once); "parse" parses every annotation on every op.
func BenchmarkMapAttachmentsNode(b *testing.B) {
	for _, form := range []struct {
		name     string
		networks string
	}{
		{"comma", "sriov-a,sriov-b@data1,sriov-c,shared/sriov-edge"},
		{"json", `[{"name":"sriov-a"},{"name":"sriov-b","interface":"data1"},{"name":"sriov-c"},{"name":"sriov-edge","namespace":"shared"}]`},
	} {
		for _, memo := range []bool{true, false} {
			name := form.name + "/parse"
			mapFn := podresources.MapAttachments
			if memo {
				name = form.name + "/memo"
				mapFn = podresources.NewMapper().Map
			}
			b.Run(name, func(b *testing.B) {
				const pods = 110
				podList := make([]*corev1.Pod, pods)
				res := make([]*podresourcesv1.PodResources, pods)
				for i := range pods {
					name := fmt.Sprintf("pod-%03d", i)
					podList[i] = annotatedPod("tenant-a", name, form.networks)
					res[i] = pod("tenant-a", name, container("app",
						devices(resP0, fmt.Sprintf("0000:%02x:00.3", i), fmt.Sprintf("0000:%02x:00.2", i)),
						devices(resP1, fmt.Sprintf("0000:%02x:08.2", i), fmt.Sprintf("0000:%02x:08.3", i))))
				}
				b.ReportAllocs()
				for b.Loop() {
					n := 0
					for i := range pods {
						atts, err := mapFn(podList[i], nads.lookup, res[i])
						if err != nil {
							b.Fatal(err)
						}
						n += len(atts)
					}
					if n != 4*pods {
						b.Fatalf("mapped %d attachments, want %d", n, 4*pods)
					}
				}
			})
		}
	}
}
