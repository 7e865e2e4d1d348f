// Package manifest decodes multi-document YAML (or JSON) manifests of the
// kinds the policy core reads: MultiNetworkPolicy, Pod, Namespace and
// NetworkAttachmentDefinition.
package manifest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// DocumentError locates a document that could not be decoded.
type DocumentError struct {
	Source   string // file name
	Document int    // 1-based index in the file
	Err      error
}

func (e *DocumentError) Error() string {
	return fmt.Sprintf("%s: document %d: %v", e.Source, e.Document, e.Err)
}

func (e *DocumentError) Unwrap() error { return e.Err }

// Decode appends every object of the manifest read from r to objs. source
// names r in errors. Empty documents are skipped; a List's items are
// decoded one by one. Unknown kinds and fields are errors, so a typo never
// silently drops part of a policy.
func Decode(objs *policy.Objects, source string, r io.Reader) error {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	for n := 1; ; n++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return &DocumentError{Source: source, Document: n, Err: err}
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			n--
			continue
		}
		if err := decodeDocument(objs, doc); err != nil {
			return &DocumentError{Source: source, Document: n, Err: err}
		}
	}
}

func decodeDocument(objs *policy.Objects, doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return fmt.Errorf("not a Kubernetes object: %w", err)
	}
	strict := func(into any) error {
		if err := yaml.UnmarshalStrict(doc, into); err != nil {
			return fmt.Errorf("%s: %w", tm.Kind, err)
		}
		return nil
	}
	group := tm.GroupVersionKind().Group
	switch {
	case tm.Kind == "MultiNetworkPolicy" && group == mnpv1beta1.SchemeGroupVersion.Group:
		if tm.APIVersion != mnpv1beta1.SchemeGroupVersion.String() {
			return fmt.Errorf("MultiNetworkPolicy: apiVersion %q not supported (want %s)", tm.APIVersion, mnpv1beta1.SchemeGroupVersion)
		}
		o := &mnpv1beta1.MultiNetworkPolicy{}
		if err := strict(o); err != nil {
			return err
		}
		defaultNamespace(&o.ObjectMeta)
		objs.Policies = append(objs.Policies, o)
	case tm.Kind == "NetworkAttachmentDefinition" && group == nadv1.SchemeGroupVersion.Group:
		o := &nadv1.NetworkAttachmentDefinition{}
		if err := strict(o); err != nil {
			return err
		}
		defaultNamespace(&o.ObjectMeta)
		objs.NADs = append(objs.NADs, o)
	case tm.Kind == "Pod" && tm.APIVersion == "v1":
		o := &corev1.Pod{}
		if err := strict(o); err != nil {
			return err
		}
		defaultNamespace(&o.ObjectMeta)
		objs.Pods = append(objs.Pods, o)
	case tm.Kind == "Namespace" && tm.APIVersion == "v1":
		o := &corev1.Namespace{}
		if err := strict(o); err != nil {
			return err
		}
		objs.Namespaces = append(objs.Namespaces, o)
	case tm.Kind == "List" && tm.APIVersion == "v1":
		var list struct {
			Items []map[string]any `json:"items"`
		}
		if err := yaml.Unmarshal(doc, &list); err != nil {
			return fmt.Errorf("kind List: %w", err)
		}
		for i, item := range list.Items {
			b, _ := yaml.Marshal(item)
			if err := decodeDocument(objs, b); err != nil {
				return fmt.Errorf("items[%d]: %w", i, err)
			}
		}
	case tm.Kind == "":
		return errors.New("missing kind")
	default:
		return fmt.Errorf("unsupported kind %s (apiVersion %q): want MultiNetworkPolicy, NetworkAttachmentDefinition, Pod or Namespace", tm.Kind, tm.APIVersion)
	}
	return nil
}

func defaultNamespace(m *metav1.ObjectMeta) {
	if m.Namespace == "" {
		m.Namespace = metav1.NamespaceDefault
	}
}

func stripComments(doc []byte) []byte {
	var out []string
	for line := range strings.SplitSeq(string(doc), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			out = append(out, line)
		}
	}
	return []byte(strings.Join(out, "\n"))
}
