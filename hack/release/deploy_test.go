package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const deployDir = "../../deploy"

// built is one kustomization's output, decoded.
type built struct {
	namespaces   []corev1.Namespace
	accounts     []corev1.ServiceAccount
	roles        []rbacv1.ClusterRole
	bindings     []rbacv1.ClusterRoleBinding
	daemonSets   []appsv1.DaemonSet
	crds         []apiextensionsv1.CustomResourceDefinition
	namespacedIn []string // namespace of every namespaced object
}

// kustomizeBuild runs kustomize (the library kubectl -k embeds) on dir and
// decodes every object strictly into its Kubernetes API type: an unknown
// or misspelt field, a wrong type or an unexpected kind fails.
func kustomizeBuild(dir string) (built, []error) {
	var b built
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return b, []error{fmt.Errorf("kustomize build %s: %w", dir, err)}
	}
	var errs []error
	for _, r := range res.Resources() {
		id := fmt.Sprintf("%s %s/%s", r.GetKind(), r.GetNamespace(), r.GetName())
		data, err := r.AsYAML()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", dir, id, err))
			continue
		}
		strict := func(into any) {
			if err := yaml.UnmarshalStrict(data, into); err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", dir, id, err))
			}
		}
		switch r.GetApiVersion() + " " + r.GetKind() {
		case "v1 Namespace":
			b.namespaces = append(b.namespaces, decode[corev1.Namespace](strict))
		case "v1 ServiceAccount":
			b.accounts = append(b.accounts, decode[corev1.ServiceAccount](strict))
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			b.roles = append(b.roles, decode[rbacv1.ClusterRole](strict))
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			b.bindings = append(b.bindings, decode[rbacv1.ClusterRoleBinding](strict))
		case "apps/v1 DaemonSet":
			b.daemonSets = append(b.daemonSets, decode[appsv1.DaemonSet](strict))
		case "apiextensions.k8s.io/v1 CustomResourceDefinition":
			b.crds = append(b.crds, decode[apiextensionsv1.CustomResourceDefinition](strict))
		default:
			errs = append(errs, fmt.Errorf("%s: %s: a kind this test does not know; add it", dir, id))
		}
		switch r.GetKind() {
		case "ServiceAccount", "DaemonSet":
			b.namespacedIn = append(b.namespacedIn, r.GetNamespace())
		}
	}
	return b, errs
}

func decode[T any](strict func(any)) T {
	var v T
	strict(&v)
	return v
}

// kustomizations lists every directory of deploy/ that kustomize builds.
func kustomizations(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(deployDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && slices.Contains([]string{"kustomization.yaml", "kustomization.yml", "Kustomization"}, d.Name()) {
			rel, _ := filepath.Rel(deployDir, filepath.Dir(path))
			dirs = append(dirs, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(dirs)
	return dirs
}

func TestEveryKustomizationBuildsIntoAPITypes(t *testing.T) {
	dirs := kustomizations(t)
	want := []string{".", "agent", "crds", "overlays/kube-system", "overlays/registry"}
	if !slices.Equal(dirs, want) {
		t.Errorf("kustomizations %v, want %v (a new overlay needs its checks here)", dirs, want)
	}
	for _, dir := range dirs {
		t.Run(dir, func(t *testing.T) {
			b, errs := kustomizeBuild(filepath.Join(deployDir, dir))
			for _, err := range errs {
				t.Error(err)
			}
			switch dir {
			case "crds":
				if len(b.crds) != 1 || b.crds[0].Name != "multi-networkpolicies.k8s.cni.cncf.io" || len(b.daemonSets) != 0 {
					t.Errorf("crds: %d CRDs, %d DaemonSets; want the MultiNetworkPolicy CRD alone", len(b.crds), len(b.daemonSets))
				}
				return
			case ".", "agent":
				checkAgent(t, b, "multi-networkpolicy-tc", "ghcr.io/k8snetworkplumbingwg/multi-networkpolicy-tc:latest")
				if len(b.namespaces) != 1 || b.namespaces[0].Name != "multi-networkpolicy-tc" {
					t.Errorf("namespaces %v, want multi-networkpolicy-tc", b.namespaces)
				}
			case "overlays/kube-system":
				checkAgent(t, b, "kube-system", "ghcr.io/k8snetworkplumbingwg/multi-networkpolicy-tc:latest")
				if len(b.namespaces) != 0 {
					t.Errorf("kube-system overlay has Namespace objects %v: kubectl delete -k would delete them", b.namespaces)
				}
			case "overlays/registry":
				checkAgent(t, b, "multi-networkpolicy-tc", "registry.example.com/multi-networkpolicy-tc:v0.1.0")
			}
		})
	}
}

// TestStrictDecodingCatchesMistakes: the decoding above would fail a
// manifest with a misspelt field, a wrong type or an unknown kind.
func TestStrictDecodingCatchesMistakes(t *testing.T) {
	for _, tt := range []struct{ name, doc, want string }{
		{"misspelt field", "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      hostNetwrk: true\n", `unknown field "hostNetwrk"`},
		{"wrong type", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\nautomountServiceAccountToken: \"yes\"\n", "cannot unmarshal string into Go struct field"},
		{"unknown kind", "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n", "a kind this test does not know"},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte("resources: [obj.yaml]\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "obj.yaml"), []byte(tt.doc), 0o644); err != nil {
			t.Fatal(err)
		}
		_, errs := kustomizeBuild(dir)
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), tt.want) {
			t.Errorf("%s: %v, want one error containing %q", tt.name, errs, tt.want)
		}
	}
}

// checkAgent: the agent's objects, all in ns, the binding naming the
// ServiceAccount there, the DaemonSet running image, and no CRD: deleting
// the agent must never delete the cluster's policies.
func checkAgent(t *testing.T, b built, ns, image string) {
	t.Helper()
	if len(b.crds) != 0 {
		t.Errorf("the agent's kustomization contains %d CRDs", len(b.crds))
	}
	if len(b.accounts) != 1 || len(b.roles) != 1 || len(b.bindings) != 1 || len(b.daemonSets) != 1 {
		t.Fatalf("%d ServiceAccounts, %d ClusterRoles, %d ClusterRoleBindings, %d DaemonSets; want one each",
			len(b.accounts), len(b.roles), len(b.bindings), len(b.daemonSets))
	}
	for _, got := range b.namespacedIn {
		if got != ns {
			t.Errorf("an object in namespace %q, want %q", got, ns)
		}
	}
	subj := b.bindings[0].Subjects
	if len(subj) != 1 || subj[0].Kind != "ServiceAccount" || subj[0].Name != b.accounts[0].Name || subj[0].Namespace != ns {
		t.Errorf("ClusterRoleBinding subjects %+v, want ServiceAccount %s/%s", subj, ns, b.accounts[0].Name)
	}
	ds := b.daemonSets[0]
	if ds.Spec.Template.Spec.ServiceAccountName != b.accounts[0].Name {
		t.Errorf("DaemonSet runs as %q, want %q", ds.Spec.Template.Spec.ServiceAccountName, b.accounts[0].Name)
	}
	if c := ds.Spec.Template.Spec.Containers; len(c) != 1 || c[0].Image != image {
		t.Errorf("DaemonSet containers %+v, want one running %s", c, image)
	}
}

// TestKustomizationsMatchPlainManifests: `kubectl apply -f deploy/agent/deploy.yml`
// and `-f deploy/crds/` install the same objects as the kustomizations.
func TestKustomizationsMatchPlainManifests(t *testing.T) {
	for dir, file := range map[string]string{".": "agent/deploy.yml", "crds": "crds/multinetworkpolicy.yaml"} {
		res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), filepath.Join(deployDir, dir))
		if err != nil {
			t.Fatal(err)
		}
		plain, err := os.ReadFile(filepath.Join(deployDir, file))
		if err != nil {
			t.Fatal(err)
		}
		docs := 0
		for doc := range bytes.SplitSeq(plain, []byte("\n---\n")) {
			if strings.TrimSpace(string(doc)) != "" {
				docs++
			}
		}
		if res.Size() != docs {
			t.Errorf("kustomize build %s: %d objects; %s has %d", dir, res.Size(), file, docs)
		}
	}
}
