package app

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// realisticPod is a pod as the API server returns it for a typical
// Deployment replica with one SR-IOV network: managed fields, env, volumes,
// probes, conditions and the kubectl last-applied annotation.
func realisticPod(i int) *corev1.Pod {
	ns := fmt.Sprintf("ns-%d", i%50)
	name := fmt.Sprintf("app-%d-7d9f8b6c5-%05d", i%200, i)
	now := metav1.NewTime(time.Unix(1_700_000_000, 0))
	fields := metav1.NewFieldsV1(strings.Repeat(`{"f:metadata":{"f:labels":{}}}`, 40))
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns, UID: types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", i)), ResourceVersion: fmt.Sprint(100000 + i),
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%200), "pod-template-hash": "7d9f8b6c5", "tier": "backend"},
			Annotations: map[string]string{
				nadv1.NetworkAttachmentAnnot:        "sriov-net",
				nadv1.NetworkStatusAnnot:            fmt.Sprintf(`[{"name":"cni0","interface":"eth0","ips":["10.244.%d.%d"],"default":true},{"name":"%s/sriov-net","interface":"net1","ips":["192.168.%d.%d"],"device-info":{"type":"pci","pci":{"pci-address":"0000:3b:00.2"}}}]`, i/250, i%250, ns, i/250, i%250),
				"kubectl.kubernetes.io/restartedAt": now.String(),
			},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "app-7d9f8b6c5", UID: "rs"}},
			ManagedFields: []metav1.ManagedFieldsEntry{
				{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, FieldsType: "FieldsV1", FieldsV1: fields, Time: &now},
				{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate, FieldsType: "FieldsV1", FieldsV1: fields, Time: &now, Subresource: "status"},
				{Manager: "multus", Operation: metav1.ManagedFieldsOperationUpdate, FieldsType: "FieldsV1", FieldsV1: fields, Time: &now},
			},
		},
		Spec: corev1.PodSpec{
			NodeName: fmt.Sprintf("node-%d", i%45),
			Containers: []corev1.Container{{
				Name: "app", Image: "registry.example.com/team/app:v1.2.3",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
				Env:   []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), "nvidia.com/cx6dx_vfs": resource.MustParse("1")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi"), "nvidia.com/cx6dx_vfs": resource.MustParse("1")},
				},
				VolumeMounts:   []corev1.VolumeMount{{Name: "kube-api-access", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", ReadOnly: true}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready"}}},
			}},
			Volumes:     []corev1.Volume{{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}}},
			Tolerations: []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists}},
		},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}, {Type: corev1.PodScheduled, Status: corev1.ConditionTrue}},
			PodIP:      "10.244.0.1", PodIPs: []corev1.PodIP{{IP: "10.244.0.1"}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: true, Image: "registry.example.com/team/app:v1.2.3", ImageID: "sha256:" + strings.Repeat("a", 64), ContainerID: "containerd://" + strings.Repeat("b", 64)}},
		},
	}
}

// heapOf returns the live heap held by what fill stores.
func heapOf(fill func() any) (uint64, any) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	kept := fill()
	runtime.GC()
	runtime.ReadMemStats(&after)
	return after.HeapAlloc - before.HeapAlloc, kept
}

// BenchmarkPeerCache5000Pods reports the informer cache's memory for 5,000
// peer pods, whole and stripped by the transform the agent installs.
func BenchmarkPeerCache5000Pods(b *testing.B) {
	const n = 5000
	var full, stripped uint64
	for range b.N {
		fullBytes, k1 := heapOf(func() any {
			s := cache.NewStore(cache.MetaNamespaceKeyFunc)
			for i := range n {
				_ = s.Add(realisticPod(i))
			}
			return s
		})
		strippedBytes, k2 := heapOf(func() any {
			s := cache.NewStore(cache.MetaNamespaceKeyFunc)
			for i := range n {
				p, _ := stripPod(realisticPod(i))
				_ = s.Add(p)
			}
			return s
		})
		runtime.KeepAlive(k1)
		runtime.KeepAlive(k2)
		full, stripped = fullBytes, strippedBytes
	}
	b.ReportMetric(float64(full)/n, "B/pod-full")
	b.ReportMetric(float64(stripped)/n, "B/pod-stripped")
	b.ReportMetric(float64(stripped)/(1<<20), "MiB-stripped-5000")
}
