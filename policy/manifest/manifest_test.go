package manifest

import (
	"errors"
	"strings"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

func TestDecode(t *testing.T) {
	in := `# leading comment
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p}
- apiVersion: k8s.cni.cncf.io/v1beta1
  kind: MultiNetworkPolicy
  metadata: {name: m, namespace: a}
  spec: {podSelector: {}}
---
{"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": {"name": "n"}, "spec": {"config": "{}"}}
`
	objs := &policy.Objects{}
	if err := Decode(objs, "in.yaml", strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	if len(objs.Namespaces) != 1 || len(objs.Pods) != 1 || len(objs.Policies) != 1 || len(objs.NADs) != 1 {
		t.Fatalf("decoded %+v", objs)
	}
	if objs.Pods[0].Namespace != "default" || objs.NADs[0].Namespace != "default" || objs.Policies[0].Namespace != "a" {
		t.Fatalf("namespaces not defaulted: %s %s %s", objs.Pods[0].Namespace, objs.NADs[0].Namespace, objs.Policies[0].Namespace)
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"unknown kind", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n", "in.yaml: document 1: unsupported kind Service"},
		{"missing kind", "metadata: {name: s}\n", "in.yaml: document 1: missing kind"},
		{"unknown field", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspecc: {}\n", `in.yaml: document 1: Pod: error unmarshaling JSON: while decoding JSON: json: unknown field "specc"`},
		{"wrong policy version", "apiVersion: k8s.cni.cncf.io/v1beta2\nkind: MultiNetworkPolicy\nmetadata: {name: m}\n", "apiVersion \"k8s.cni.cncf.io/v1beta2\" not supported"},
		{"second document", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [\n", "in.yaml: document 2:"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Decode(&policy.Objects{}, "in.yaml", strings.NewReader(c.in))
			var de *DocumentError
			if !errors.As(err, &de) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want a DocumentError containing %q", err, c.want)
			}
		})
	}
}
