package app

import (
	"fmt"
	"net"
	"time"

	mnpclient "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/client/clientset/versioned"
	mnpinformers "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/client/informers/externalversions"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	nadclient "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/client/clientset/versioned"
	nadinformers "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/client/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// Clients are the API clients the agent uses. The MultiNetworkPolicy client
// is the clientset published with the API types (multi-networkpolicy
// v1.0.1): it is generated code that only uses client-go's stable REST and
// informer surface, and builds and works against client-go v0.37, so there
// is nothing to regenerate.
type Clients struct {
	Kube kubernetes.Interface
	MNP  mnpclient.Interface
	NAD  nadclient.Interface
}

// NewClients builds the clients from --kubeconfig/--master, or the
// in-cluster configuration when both are empty.
func NewClients(kubeconfig, master string) (*Clients, *rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags(master, kubeconfig)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client configuration (--kubeconfig=%q --master=%q): %w", kubeconfig, master, err)
	}
	c, err := ClientsForConfig(cfg)
	return c, cfg, err
}

// ClientsForConfig builds the clients from a REST configuration.
func ClientsForConfig(cfg *rest.Config) (*Clients, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "multi-networkpolicy-tc"
	// 5,000 pods list in a few requests; watches don't count against QPS.
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 20, 40
	}
	// An unreachable API server fails a connection in 10s, not after the
	// kernel's TCP timeout (minutes): its errors reach the log early.
	if cfg.Dial == nil {
		cfg.Dial = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	mnp, err := mnpclient.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	nad, err := nadclient.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Clients{Kube: kube, MNP: mnp, NAD: nad}, nil
}

// informerSet holds the agent's informers. Peers are watched cluster-wide
// but stored stripped (see stripPod); this node's pods are watched again,
// whole, with a field selector, for the VF mapping.
type informerSet struct {
	kube      informers.SharedInformerFactory
	localKube informers.SharedInformerFactory
	mnp       mnpinformers.SharedInformerFactory
	nad       nadinformers.SharedInformerFactory

	pods       cache.SharedIndexInformer
	localPods  cache.SharedIndexInformer
	namespaces cache.SharedIndexInformer
	policies   cache.SharedIndexInformer
	nads       cache.SharedIndexInformer
}

func newInformerSet(c *Clients, nodeName string) *informerSet {
	s := &informerSet{
		kube: informers.NewSharedInformerFactoryWithOptions(c.Kube, 0, informers.WithTransform(stripPod)),
		localKube: informers.NewSharedInformerFactoryWithOptions(c.Kube, 0,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
			}),
			informers.WithTransform(func(obj any) (any, error) {
				if p, ok := obj.(*corev1.Pod); ok {
					p.ManagedFields = nil // never read, and the largest part of a pod
				}
				return obj, nil
			})),
		mnp: mnpinformers.NewSharedInformerFactory(c.MNP, 0),
		nad: nadinformers.NewSharedInformerFactory(c.NAD, 0),
	}
	s.pods = s.kube.Core().V1().Pods().Informer()
	s.namespaces = s.kube.Core().V1().Namespaces().Informer()
	s.localPods = s.localKube.Core().V1().Pods().Informer()
	s.policies = s.mnp.K8sCniCncfIo().V1beta1().MultiNetworkPolicies().Informer()
	s.nads = s.nad.K8sCniCncfIo().V1().NetworkAttachmentDefinitions().Informer()
	return s
}

func (s *informerSet) start(stop <-chan struct{}) {
	s.kube.Start(stop)
	s.localKube.Start(stop)
	s.mnp.Start(stop)
	s.nad.Start(stop)
}

func (s *informerSet) hasSynced() bool {
	return s.pods.HasSynced() && s.localPods.HasSynced() && s.namespaces.HasSynced() &&
		s.policies.HasSynced() && s.nads.HasSynced()
}

// shutdown waits for the client-go factories' goroutines; the generated
// factories of the CRD clients predate Shutdown and stop with the channel.
func (s *informerSet) shutdown() {
	s.kube.Shutdown()
	s.localKube.Shutdown()
}

// keptPodAnnotations are the only annotations policy reads from a peer: its
// IPs on each network (network-status, written by multus) and, as a
// fallback, the static IPs requested in the networks annotation.
var keptPodAnnotations = []string{nadv1.NetworkStatusAnnot, nadv1.NetworkAttachmentAnnot}

// stripPod reduces a pod to what the policy core reads from a peer: name,
// namespace, labels, the two network annotations, node, hostNetwork,
// container ports and phase. At 5,000 pods this keeps the cache to a few MB
// instead of the hundreds full pods take (managed fields, env, volumes,
// conditions…).
func stripPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // tombstones carry an already stripped pod
	}
	s := &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name:              p.Name,
			Namespace:         p.Namespace,
			UID:               p.UID,
			ResourceVersion:   p.ResourceVersion,
			Labels:            p.Labels,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			NodeName:    p.Spec.NodeName,
			HostNetwork: p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}
	for _, k := range keptPodAnnotations {
		if v, ok := p.Annotations[k]; ok {
			if s.Annotations == nil {
				s.Annotations = make(map[string]string, len(keptPodAnnotations))
			}
			s.Annotations[k] = v
		}
	}
	for _, c := range p.Spec.Containers {
		if len(c.Ports) == 0 {
			continue
		}
		s.Spec.Containers = append(s.Spec.Containers, corev1.Container{Name: c.Name, Ports: c.Ports})
	}
	return s, nil
}

// tombstone unwraps the object of a delete notification.
func tombstone(obj any) any {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}

// mappingChanged reports whether a local pod changed in a way that can change
// its VF mapping or whether it is enforced at all.
func mappingChanged(old, cur *corev1.Pod) bool {
	return old.UID != cur.UID ||
		old.Status.Phase != cur.Status.Phase ||
		(old.DeletionTimestamp == nil) != (cur.DeletionTimestamp == nil) ||
		old.Annotations[nadv1.NetworkAttachmentAnnot] != cur.Annotations[nadv1.NetworkAttachmentAnnot]
}
