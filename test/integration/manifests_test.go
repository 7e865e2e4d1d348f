package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
)

// resources maps the kinds of deploy/ to their API resources, so the real
// manifests are installed as they are (no client-side conversion).
var resources = map[string]schema.GroupVersionResource{
	"CustomResourceDefinition": {Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"},
	"Namespace":                {Version: "v1", Resource: "namespaces"},
	"ServiceAccount":           {Version: "v1", Resource: "serviceaccounts"},
	"ClusterRole":              {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding":       {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"DaemonSet":                {Group: "apps", Version: "v1", Resource: "daemonsets"},
}

// repoRoot is the module root, two levels up from this package.
func repoRoot(t testing.TB) string {
	t.Helper()
	abs, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// applyFile creates every object of a multi-document YAML file.
func applyFile(t testing.TB, cfg *rest.Config, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var out []*unstructured.Unstructured
	for doc := 1; ; doc++ {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("%s: document %d: %v", path, doc, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvr, ok := resources[obj.GetKind()]
		if !ok {
			t.Fatalf("%s: document %d: kind %s not known to the test", path, doc, obj.GetKind())
		}
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if ns := obj.GetNamespace(); ns != "" {
			ri = dyn.Resource(gvr).Namespace(ns)
		}
		created, err := ri.Create(context.Background(), obj, metav1.CreateOptions{FieldValidation: "Strict"})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("%s: document %d (%s %s): %v", path, doc, obj.GetKind(), obj.GetName(), err)
		}
		if created != nil {
			out = append(out, created)
		}
	}
	return out
}

// installCRDs installs deploy/crds and the NAD CRD and waits until they are
// established.
func installCRDs(t testing.TB, cfg *rest.Config) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot(t), "deploy", "crds", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no CRDs in deploy/crds: %v", err)
	}
	files = append(files, filepath.Join("testdata", "nad-crd.yaml"))
	var names []string
	for _, f := range files {
		for _, o := range applyFile(t, cfg, f) {
			names = append(names, o.GetName())
		}
	}
	dyn := dynamic.NewForConfigOrDie(cfg)
	for _, name := range names {
		err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			crd, err := dyn.Resource(resources["CustomResourceDefinition"]).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("CRD %s not established: %v", name, err)
		}
	}
}

// installDeploy creates everything in deploy/deploy.yml: the namespace, the
// ServiceAccount, the RBAC the agent runs with, and the DaemonSet (which
// nothing runs here, but the API server validates it).
func installDeploy(t testing.TB, cfg *rest.Config) {
	t.Helper()
	applyFile(t, cfg, filepath.Join(repoRoot(t), "deploy", "deploy.yml"))
}

const (
	agentNamespace      = "multi-networkpolicy-tc"
	agentServiceAccount = "multi-networkpolicy-tc"
)

func mustf(t testing.TB, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}
