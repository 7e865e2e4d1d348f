package app

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

func TestAgentOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		modify  func(*AgentOptions)
		wantErr string
	}{
		{"defaults", func(*AgentOptions) {}, ""},
		{"no plugins", func(o *AgentOptions) { o.NetworkPlugins = []string{" ", ""} }, "--network-plugins"},
		{"resync too short", func(o *AgentOptions) { o.ResyncPeriod = time.Millisecond }, "--resync-period"},
		{"bad metrics address", func(o *AgentOptions) { o.MetricsBindAddress = "9310" }, "--metrics-bind-address"},
		{"metrics disabled", func(o *AgentOptions) { o.MetricsBindAddress = "0" }, ""},
		{"bad offload", func(o *AgentOptions) { o.TCOffload = "always" }, "--tc-offload"},
		{"required", func(o *AgentOptions) { o.TCOffload = "required" }, ""},
		{"skip-sw", func(o *AgentOptions) { o.TCOffload = "skip-sw" }, ""},
		{"software", func(o *AgentOptions) { o.TCOffload = "software" }, ""},
		{"skip-hw", func(o *AgentOptions) { o.TCOffload = "skip-hw" }, ""},
		{"required on the software profile", func(o *AgentOptions) { o.TCOffload, o.OffloadProfile = "required", "software" }, "--offload-profile=software"},
		{"no workers", func(o *AgentOptions) { o.Workers = 0 }, "--workers"},
		{"empty socket", func(o *AgentOptions) { o.PodResourcesSocket = "" }, "--podresources-socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := NewAgentOptions()
			o.HostnameOverride = "node-a"
			tt.modify(o)
			err := o.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one naming %s", err, tt.wantErr)
			}
		})
	}
}

func TestAgentOptionsHostnameDefault(t *testing.T) {
	o := NewAgentOptions()
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if o.HostnameOverride == "" {
		t.Fatal("node name not defaulted from the host name")
	}
}

func TestStripPodKeepsWhatPolicyReads(t *testing.T) {
	full := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "p", Namespace: "ns", UID: "u1", ResourceVersion: "7",
			Labels: map[string]string{"app": "x"},
			Annotations: map[string]string{
				nadv1.NetworkStatusAnnot:                           `[{"name":"ns/net","ips":["10.0.0.1"]}]`,
				nadv1.NetworkAttachmentAnnot:                       "net",
				"kubectl.kubernetes.io/last-applied-configuration": strings.Repeat("x", 4096),
			},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
		},
		Spec: corev1.PodSpec{
			NodeName: "node-b", HostNetwork: true,
			Containers: []corev1.Container{
				{Name: "web", Image: "img", Env: []corev1.EnvVar{{Name: "A", Value: "B"}}, Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}},
				{Name: "sidecar", Image: "img2"},
			},
			Volumes: []corev1.Volume{{Name: "v"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady}}},
	}
	obj, err := stripPod(full)
	if err != nil {
		t.Fatal(err)
	}
	s := obj.(*corev1.Pod)
	if s.Name != "p" || s.Namespace != "ns" || s.UID != "u1" || s.Labels["app"] != "x" || s.Spec.NodeName != "node-b" ||
		!s.Spec.HostNetwork || s.Status.Phase != corev1.PodRunning {
		t.Errorf("identity, labels, node, hostNetwork or phase lost: %+v", s)
	}
	if len(s.Annotations) != 2 || s.Annotations[nadv1.NetworkStatusAnnot] == "" || s.Annotations[nadv1.NetworkAttachmentAnnot] != "net" {
		t.Errorf("annotations: %v, want only network-status and networks", s.Annotations)
	}
	if len(s.Spec.Containers) != 1 || s.Spec.Containers[0].Ports[0].Name != "http" || s.Spec.Containers[0].Image != "" || len(s.Spec.Containers[0].Env) != 0 {
		t.Errorf("containers: %+v, want only the one with ports, ports only", s.Spec.Containers)
	}
	if s.ManagedFields != nil || s.Spec.Volumes != nil || s.Status.Conditions != nil {
		t.Error("managed fields, volumes or conditions kept")
	}
	// Tombstones and other objects pass through.
	ns := &corev1.Namespace{}
	if o, _ := stripPod(ns); o != ns {
		t.Error("non-pod object changed")
	}
}

func TestInputErrorsSplitsTheJoin(t *testing.T) {
	a := &policy.InputError{Kind: "MultiNetworkPolicy", Namespace: "ns", Name: "p", Field: "spec.ingress[0].from[0].ipBlock.cidr", Err: errors.New("bad")}
	b := &policy.InputError{Kind: "Pod", Namespace: "ns", Name: "q", Field: "metadata.annotations[k8s.v1.cni.cncf.io/network-status]", Err: errors.New("json")}
	other := errors.New("something else")
	inputs, rest := inputErrors(errors.Join(a, fmt.Errorf("wrapped: %w", b), other))
	if len(inputs) != 2 || inputs[0] != a || inputs[1] != b {
		t.Errorf("inputs = %v", inputs)
	}
	if len(rest) != 1 || !errors.Is(rest[0], other) {
		t.Errorf("rest = %v", rest)
	}
	if in, r := inputErrors(nil); in != nil || r != nil {
		t.Error("nil error produced parts")
	}
}

func TestEventReporterOncePerInterval(t *testing.T) {
	rec := record.NewFakeRecorder(10)
	now := time.Unix(1000, 0)
	r := newEventReporter(rec, func(kind, ns, name string) types.UID { return "uid-" + types.UID(name) }, time.Minute)
	r.now = func() time.Time { return now }
	r.warn("MultiNetworkPolicy", "ns", "p", reasonInvalidInput, "cidr bad")
	r.warn("MultiNetworkPolicy", "ns", "p", reasonInvalidInput, "cidr bad") // duplicate: dropped
	r.warn("MultiNetworkPolicy", "ns", "p", reasonInvalidInput, "port bad") // different message: sent
	now = now.Add(2 * time.Minute)
	r.warn("MultiNetworkPolicy", "ns", "p", reasonInvalidInput, "cidr bad") // interval passed: sent again
	close(rec.Events)
	var got []string
	for e := range rec.Events {
		got = append(got, e)
	}
	want := []string{"Warning InvalidInput cidr bad", "Warning InvalidInput port bad", "Warning InvalidInput cidr bad"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("events %q, want %q", got, want)
	}
}

func TestMappingChanged(t *testing.T) {
	base := func() *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{UID: "u", Annotations: map[string]string{nadv1.NetworkAttachmentAnnot: "net"}, Labels: map[string]string{"a": "b"}},
			Status:     corev1.PodStatus{Phase: corev1.PodPending},
		}
	}
	tests := []struct {
		name   string
		modify func(*corev1.Pod)
		want   bool
	}{
		{"nothing", func(*corev1.Pod) {}, false},
		{"labels only (policy input, not mapping)", func(p *corev1.Pod) { p.Labels["a"] = "c" }, false},
		{"phase", func(p *corev1.Pod) { p.Status.Phase = corev1.PodRunning }, true},
		{"networks", func(p *corev1.Pod) { p.Annotations[nadv1.NetworkAttachmentAnnot] = "net,net2" }, true},
		{"recreated", func(p *corev1.Pod) { p.UID = "v" }, true},
		{"deleting", func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{} }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := base()
			tt.modify(cur)
			if got := mappingChanged(base(), cur); got != tt.want {
				t.Errorf("mappingChanged = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRootHelpListsAgentFlags(t *testing.T) {
	var out, errOut strings.Builder
	if code := Main([]string{"--help"}, &out, &errOut); code != 0 {
		t.Fatalf("--help exit %d: %s", code, errOut.String())
	}
	for _, flag := range []string{
		"--kubeconfig", "--master", "--hostname-override", "--network-plugins", "--pod-rules-path",
		"--podresources-socket", "--resync-period", "--metrics-bind-address", "--health-probe-bind-address",
		"--accept-icmp", "--accept-icmpv6", "--log-format", "--log-level", "--tc-offload",
	} {
		if !strings.Contains(out.String(), flag+" ") && !strings.Contains(out.String(), flag+"[") {
			t.Errorf("--help does not show %s:\n%s", flag, out.String())
		}
	}
}

func TestAgentRejectsBadFlagsWithExitCode2(t *testing.T) {
	var out, errOut strings.Builder
	code := Main([]string{"--hostname-override=n", "--tc-offload=never"}, &out, &errOut)
	if code != exitBadInput || !strings.Contains(errOut.String(), "--tc-offload") {
		t.Fatalf("exit %d, stderr %q; want %d naming --tc-offload", code, errOut.String(), exitBadInput)
	}
}
