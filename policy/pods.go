package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	nadutils "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/utils"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// podInfo is what the policy core needs of a pod, parsed once per update.
type podInfo struct {
	namespace string
	name      string
	labels    labels.Set
	// peerable: Running and not hostNetwork. Other pods never match as
	// peers (their IPs may already belong to someone else).
	peerable bool
	// ips holds the pod's addresses per secondary network, from multus'
	// network-status annotation, or the static ips of the network
	// selection element when multus has not reported the network.
	ips   map[NetworkRef][]netip.Addr
	ports []containerPort
	errs  []error
}

type containerPort struct {
	name     string
	protocol Protocol
	port     uint16
}

func key(namespace, name string) string { return namespace + "/" + name }

func newPodInfo(p *corev1.Pod) *podInfo {
	info := &podInfo{
		namespace: p.Namespace,
		name:      p.Name,
		labels:    labels.Set(p.Labels),
		peerable:  p.Status.Phase == corev1.PodRunning && !p.Spec.HostNetwork,
		ips:       map[NetworkRef][]netip.Addr{},
	}
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == "" || cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
				continue
			}
			proto := Protocol(cp.Protocol)
			if proto == "" {
				proto = TCP
			}
			info.ports = append(info.ports, containerPort{name: cp.Name, protocol: proto, port: uint16(cp.ContainerPort)})
		}
	}
	info.parseNetworkStatus(p)
	info.parseStaticIPs(p)
	return info
}

func (p *podInfo) fail(field string, err error) {
	p.errs = append(p.errs, &InputError{Kind: "Pod", Namespace: p.namespace, Name: p.name, Field: field, Err: err})
}

func (p *podInfo) parseNetworkStatus(pod *corev1.Pod) {
	if _, ok := pod.Annotations[nadv1.NetworkStatusAnnot]; !ok {
		return
	}
	statuses, err := nadutils.GetNetworkStatus(pod)
	if err != nil {
		p.fail("metadata.annotations["+nadv1.NetworkStatusAnnot+"]", err)
		return
	}
	for i, st := range statuses {
		if st.Default {
			continue
		}
		ref, err := ParseNetworkRef(st.Name, pod.Namespace)
		if err != nil {
			p.fail(fmt.Sprintf("metadata.annotations[%s][%d].name", nadv1.NetworkStatusAnnot, i), err)
			continue
		}
		for _, s := range st.IPs {
			a, err := parseIPOrCIDRAddr(s)
			if err != nil {
				p.fail(fmt.Sprintf("metadata.annotations[%s][%d].ips", nadv1.NetworkStatusAnnot, i), err)
				continue
			}
			p.ips[ref] = appendUnique(p.ips[ref], a)
		}
	}
}

// parseStaticIPs fills networks that network-status does not report from
// the static ips requested in k8s.v1.cni.cncf.io/networks.
func (p *podInfo) parseStaticIPs(pod *corev1.Pod) {
	// Only the JSON form can request ips; skip parsing the comma form,
	// which the NAD client does with a regexp compiled per element.
	if !strings.HasPrefix(strings.TrimSpace(pod.Annotations[nadv1.NetworkAttachmentAnnot]), "[") {
		return
	}
	elems, err := podNetworks(pod)
	if err != nil {
		p.fail("metadata.annotations["+nadv1.NetworkAttachmentAnnot+"]", err)
		return
	}
	for _, e := range elems {
		ref := NetworkRef{Namespace: e.Namespace, Name: e.Name}
		if _, reported := p.ips[ref]; reported {
			continue
		}
		for _, s := range e.IPRequest {
			a, err := parseIPOrCIDRAddr(s)
			if err != nil {
				p.fail("metadata.annotations["+nadv1.NetworkAttachmentAnnot+"].ips", err)
				continue
			}
			p.ips[ref] = appendUnique(p.ips[ref], a)
		}
	}
}

// podNetworks parses the pod's network selection annotation, in either the
// JSON list or the comma-separated ns/name@ifname form.
func podNetworks(pod *corev1.Pod) ([]*nadv1.NetworkSelectionElement, error) {
	v, ok := pod.Annotations[nadv1.NetworkAttachmentAnnot]
	if !ok || strings.TrimSpace(v) == "" {
		return nil, nil
	}
	return nadutils.ParseNetworkAnnotation(v, pod.Namespace)
}

// PodAttachments lists the secondary network attachments a pod requests, in
// annotation order, with multus' default interface names (net1, net2, ...)
// where the annotation names none. Key is left empty. The render command
// and tests use it; the agent derives attachments from PodResources instead.
func PodAttachments(pod *corev1.Pod) ([]Attachment, error) {
	elems, err := podNetworks(pod)
	if err != nil {
		return nil, &InputError{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name,
			Field: "metadata.annotations[" + nadv1.NetworkAttachmentAnnot + "]", Err: err}
	}
	out := make([]Attachment, 0, len(elems))
	for i, e := range elems {
		ifname := e.InterfaceRequest
		if ifname == "" {
			ifname = fmt.Sprintf("net%d", i+1)
		}
		out = append(out, Attachment{
			PodNamespace: pod.Namespace, PodName: pod.Name,
			Network:   NetworkRef{Namespace: e.Namespace, Name: e.Name},
			Interface: ifname,
		})
	}
	return out, nil
}

func parseIPOrCIDRAddr(s string) (netip.Addr, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Addr{}, err
		}
		return p.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	if a.Zone() != "" {
		return netip.Addr{}, errors.New("zoned address " + s)
	}
	return a.Unmap(), nil
}

func appendUnique(s []netip.Addr, a netip.Addr) []netip.Addr {
	if slices.Contains(s, a) {
		return s
	}
	return append(s, a)
}

// fingerprint summarises what policy evaluation reads of a pod, so an
// update that changes none of it (status conditions, resource versions...)
// affects no attachment.
func (p *podInfo) fingerprint() string {
	if p == nil {
		return ""
	}
	b, _ := json.Marshal(struct {
		L map[string]string
		P bool
		I map[string][]netip.Addr
		C []containerPort
	}{p.labels, p.peerable, ipsByName(p.ips), p.ports})
	return string(b)
}

func ipsByName(m map[NetworkRef][]netip.Addr) map[string][]netip.Addr {
	out := make(map[string][]netip.Addr, len(m))
	for k, v := range m {
		out[k.String()] = v
	}
	return out
}

// MarshalJSON lets fingerprint include container ports.
func (c containerPort) MarshalJSON() ([]byte, error) {
	return json.Marshal(fmt.Sprintf("%s/%s/%d", c.name, c.protocol, c.port))
}
