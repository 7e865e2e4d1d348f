package podresources

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	nadutils "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/utils"
	corev1 "k8s.io/api/core/v1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// ResourceNameAnnotation on a NetworkAttachmentDefinition names the device
// plugin resource whose devices back the network (multus and the SR-IOV CNI).
const ResourceNameAnnotation = "k8s.v1.cni.cncf.io/resourceName"

// ErrDeviceCountMismatch means the kubelet assigned a pod a different number
// of devices of a resource than the pod has networks on that resource: which
// VF serves which network can then not be known, so nothing is mapped.
var ErrDeviceCountMismatch = errors.New("device count does not match networks")

// Attachment is one pod network backed by one device: the VF the kubelet
// assigned for that network.
type Attachment struct {
	PodNamespace     string `json:"podNamespace"`
	PodName          string `json:"podName"`
	NetworkNamespace string `json:"networkNamespace"`
	NetworkName      string `json:"networkName"`
	// Interface is the name inside the pod: the one the annotation requests,
	// else multus's default netN, N being the network's position (from 1).
	Interface    string `json:"interface"`
	ResourceName string `json:"resourceName"`
	// DeviceID is the device plugin's ID; for SR-IOV, the VF PCI address.
	DeviceID string `json:"deviceID"`
}

// Network is the NetworkAttachmentDefinition as namespace/name.
func (a Attachment) Network() string { return a.NetworkNamespace + "/" + a.NetworkName }

// Pod is the pod as namespace/name.
func (a Attachment) Pod() string { return a.PodNamespace + "/" + a.PodName }

// NADLookup returns a NetworkAttachmentDefinition, or an error when it
// cannot (not found, API error). Callers pass a lister or a map.
type NADLookup func(namespace, name string) (*nadv1.NetworkAttachmentDefinition, error)

// MapAttachments pairs a pod's secondary networks with the devices the
// kubelet assigned it, by the rule multus uses to hand a device to the CNI:
// walk the networks in the order of the k8s.v1.cni.cncf.io/networks
// annotation (JSON list or "ns/name@ifname" comma form); each network whose
// NAD names a resource takes the next device ID of that resource, the IDs
// of a resource being those of all the pod's containers, deduplicated and
// sorted. Networks without a resource (macvlan, …) get no attachment but
// keep their position for interface naming.
//
// It is pure: the NADs come through lookup, the devices are the pod's
// PodResources entry (nil when the kubelet reports none). When the devices
// of a resource don't match its networks one for one, it returns no
// attachment for the pod and an error naming the pod and the resource:
// guessing would put one pod's rules on another pod's VF.
func MapAttachments(pod *corev1.Pod, lookup NADLookup, res *podresourcesv1.PodResources) ([]Attachment, error) {
	return mapAttachments(pod, lookup, res, parseNetworks)
}

// Mapper is MapAttachments with a memo of parsed network annotations. The
// NAD client's parser compiles a regexp per name in the comma form, which
// makes parsing most of the cost of mapping a node; an annotation rarely
// changes, so the agent keeps one Mapper and re-maps at the cost of lookups.
// Results are the same as MapAttachments'. Safe for concurrent use.
type Mapper struct {
	mu     sync.Mutex
	parsed map[annotationKey][]network
}

type annotationKey struct{ namespace, annotation string }

// maxParsed bounds the memo; past it the memo starts over, which costs one
// parse per pod and keeps memory flat however annotations churn.
const maxParsed = 4096

// NewMapper returns a Mapper with an empty memo.
func NewMapper() *Mapper { return &Mapper{parsed: map[annotationKey][]network{}} }

// Map is MapAttachments, parsing each distinct annotation once.
func (m *Mapper) Map(pod *corev1.Pod, lookup NADLookup, res *podresourcesv1.PodResources) ([]Attachment, error) {
	return mapAttachments(pod, lookup, res, m.parse)
}

func (m *Mapper) parse(annotation, namespace string) ([]network, error) {
	key := annotationKey{namespace, annotation}
	m.mu.Lock()
	nets, ok := m.parsed[key]
	m.mu.Unlock()
	if ok {
		return nets, nil
	}
	nets, err := parseNetworks(annotation, namespace)
	if err != nil {
		return nil, err // not memoized: errors are rare and carry the text
	}
	m.mu.Lock()
	if len(m.parsed) >= maxParsed {
		clear(m.parsed)
	}
	m.parsed[key] = nets
	m.mu.Unlock()
	return nets, nil
}

// network is one entry of the annotation, read-only once parsed.
type network struct {
	namespace, name, ifname string
}

// parseNetworks parses with the NAD client and fills in multus's default
// interface names, netN by position.
func parseNetworks(annotation, namespace string) ([]network, error) {
	elems, err := nadutils.ParseNetworkAnnotation(annotation, namespace)
	if err != nil {
		return nil, err
	}
	nets := make([]network, len(elems))
	for i, e := range elems {
		nets[i] = network{namespace: e.Namespace, name: e.Name, ifname: e.InterfaceRequest}
		if nets[i].ifname == "" {
			nets[i].ifname = "net" + strconv.Itoa(i+1)
		}
	}
	return nets, nil
}

func mapAttachments(pod *corev1.Pod, lookup NADLookup, res *podresourcesv1.PodResources,
	parse func(annotation, namespace string) ([]network, error),
) ([]Attachment, error) {
	annotation := pod.Annotations[nadv1.NetworkAttachmentAnnot]
	if strings.TrimSpace(annotation) == "" {
		return nil, nil
	}
	networks, err := parse(annotation, pod.Namespace)
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: annotation %s: %w", pod.Namespace, pod.Name, nadv1.NetworkAttachmentAnnot, err)
	}

	var out []Attachment
	// A pod uses one or two resources: a slice on the stack beats a map.
	var buf [2]resourceDevices
	byResource := buf[:0]
	for _, n := range networks {
		nad, err := lookup(n.namespace, n.name)
		if err != nil {
			return nil, fmt.Errorf("pod %s/%s: network %s/%s: %w", pod.Namespace, pod.Name, n.namespace, n.name, err)
		}
		resource := nad.Annotations[ResourceNameAnnotation]
		if resource == "" {
			continue
		}
		r := findResource(byResource, resource)
		if r < 0 {
			byResource = append(byResource, resourceDevices{name: resource})
			r = len(byResource) - 1
		}
		byResource[r].networks++
		if out == nil {
			out = make([]Attachment, 0, len(networks))
		}
		out = append(out, Attachment{
			PodNamespace:     pod.Namespace,
			PodName:          pod.Name,
			NetworkNamespace: n.namespace,
			NetworkName:      n.name,
			Interface:        n.ifname,
			ResourceName:     resource,
		})
	}
	if len(out) == 0 {
		return nil, nil
	}

	gatherDevices(res, byResource)
	for _, r := range byResource {
		if len(r.ids) != r.networks {
			var nets []string
			for _, a := range out {
				if a.ResourceName == r.name {
					nets = append(nets, a.Network()+"@"+a.Interface)
				}
			}
			return nil, fmt.Errorf("pod %s/%s: resource %s: %w: %d network(s) (%s) but the kubelet assigned %d device(s) [%s]",
				pod.Namespace, pod.Name, r.name, ErrDeviceCountMismatch,
				r.networks, strings.Join(nets, ", "), len(r.ids), strings.Join(r.ids, ", "))
		}
	}
	for i := range out {
		r := &byResource[findResource(byResource, out[i].ResourceName)]
		out[i].DeviceID = r.ids[r.next]
		r.next++
	}
	return out, nil
}

// resourceDevices tracks one resource of a pod: how many networks use it,
// the device IDs the kubelet assigned, and the next one to hand out.
type resourceDevices struct {
	name     string
	networks int
	ids      []string
	next     int
}

func findResource(rs []resourceDevices, name string) int {
	for i := range rs {
		if rs[i].name == name {
			return i
		}
	}
	return -1
}

// gatherDevices collects, for the resources the networks use, the device
// IDs of all containers (init sidecars included), deduplicated since a
// kubelet may report a device reused across containers, and sorted.
func gatherDevices(res *podresourcesv1.PodResources, rs []resourceDevices) {
	for _, c := range res.GetContainers() {
		for _, d := range c.GetDevices() {
			if r := findResource(rs, d.GetResourceName()); r >= 0 {
				// append to a fresh slice: the caller's answer stays as it is
				rs[r].ids = append(rs[r].ids, d.GetDeviceIds()...)
			}
		}
	}
	for i := range rs {
		slices.Sort(rs[i].ids)
		rs[i].ids = slices.Compact(rs[i].ids)
	}
}
