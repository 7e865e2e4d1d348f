package sandbox

import (
	"context"
	"fmt"
	"os"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy/manifest"
)

// Applied is what ApplyManifest created.
type Applied struct {
	Pods     []*Pod
	Policies []*mnpv1beta1.MultiNetworkPolicy
}

// ApplyManifest creates the objects of a YAML file (the docs/examples
// format: Namespaces, NADs, Pods, MultiNetworkPolicies): namespaces and
// NADs first, then pods (run on the node, see AddPod), then policies.
// Existing policies are updated.
func (s *Sandbox) ApplyManifest(ctx context.Context, path string) (*Applied, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	objs := &policy.Objects{}
	if err := manifest.Decode(objs, path, f); err != nil {
		return nil, err
	}
	return s.Apply(ctx, objs)
}

// Apply creates objs in the API server (and runs its pods on the node).
func (s *Sandbox) Apply(ctx context.Context, objs *policy.Objects) (*Applied, error) {
	out := &Applied{}
	for _, ns := range objs.Namespaces {
		ns = ns.DeepCopy()
		ns.ResourceVersion = ""
		if _, err := s.Clients.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("namespace %s: %w", ns.Name, err)
		}
	}
	for _, nad := range objs.NADs {
		nad = nad.DeepCopy()
		nad.ResourceVersion = ""
		if _, err := s.Clients.NAD.K8sCniCncfIoV1().NetworkAttachmentDefinitions(nad.Namespace).Create(ctx, nad, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("NAD %s/%s: %w", nad.Namespace, nad.Name, err)
		}
	}
	for _, pod := range objs.Pods {
		p, err := s.AddPod(ctx, pod)
		if err != nil {
			return nil, err
		}
		out.Pods = append(out.Pods, p)
	}
	for _, pol := range objs.Policies {
		p, err := s.ApplyPolicy(ctx, pol)
		if err != nil {
			return nil, err
		}
		out.Policies = append(out.Policies, p)
	}
	return out, nil
}

// ApplyPolicy creates or updates a MultiNetworkPolicy.
func (s *Sandbox) ApplyPolicy(ctx context.Context, pol *mnpv1beta1.MultiNetworkPolicy) (*mnpv1beta1.MultiNetworkPolicy, error) {
	c := s.Clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(pol.Namespace)
	pol = pol.DeepCopy()
	pol.ResourceVersion = ""
	created, err := c.Create(ctx, pol, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		old, gerr := c.Get(ctx, pol.Name, metav1.GetOptions{})
		if gerr != nil {
			return nil, gerr
		}
		pol.ResourceVersion = old.ResourceVersion
		created, err = c.Update(ctx, pol, metav1.UpdateOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("MultiNetworkPolicy %s/%s: %w", pol.Namespace, pol.Name, err)
	}
	return created, nil
}

// DeletePolicy deletes a MultiNetworkPolicy.
func (s *Sandbox) DeletePolicy(ctx context.Context, namespace, name string) error {
	return s.Clients.MNP.K8sCniCncfIoV1beta1().MultiNetworkPolicies(namespace).Delete(ctx, name, metav1.DeleteOptions{})
}
