package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	nadutils "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/utils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/kubeletsim"
)

const resourceNameAnnotation = "k8s.v1.cni.cncf.io/resourceName"

// Pod is a running sandbox pod: a network namespace holding the VFs its
// networks got, and the Pod object in the API server.
type Pod struct {
	Namespace, Name string
	NS              netns.NsHandle
	nsName          string
	Attachments     []*PodAttachment
	// Remote marks a pod of another node (AddRemote): it has no Pod
	// object and no policy of its own.
	Remote bool
}

// PodAttachment is one network of a pod.
type PodAttachment struct {
	Network     policy.NetworkRef
	Interface   string
	VFPCI       string
	Representor string
	IPs         []netip.Addr
	vf          vf
}

// Key is namespace/name.
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// Attachment returns the pod's attachment to network, or nil.
func (p *Pod) Attachment(network policy.NetworkRef) *PodAttachment {
	for _, a := range p.Attachments {
		if a.Network == network {
			return a
		}
	}
	return nil
}

// AddPod runs a pod the way the kubelet, multus and accelerated-bridge-cni
// would: the kubelet simulator allocates one VF per SR-IOV network through
// the device plugin's Allocate; each network, in the order of the networks
// annotation, takes the next of the pod's sorted device IDs of its resource
// (multus's rule); the VF netdev moves into the pod's network namespace
// under the requested interface name with the requested static IPs, and its
// representor joins the bridge. The Pod object is then created bound to
// this node, with the network-status annotation multus would write and
// phase Running.
func (s *Sandbox) AddPod(ctx context.Context, in *corev1.Pod) (*Pod, error) {
	pod := in.DeepCopy()
	pod.ResourceVersion = ""
	key := pod.Namespace + "/" + pod.Name
	elems, err := nadutils.ParsePodNetworkAnnotation(pod)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", key, err)
	}
	if len(pod.Spec.Containers) == 0 {
		return nil, fmt.Errorf("pod %s has no container", key)
	}
	// Resource per network, from the NADs.
	type netReq struct {
		ref      policy.NetworkRef
		ifname   string
		resource string
		ips      []netip.Prefix
	}
	var reqs []netReq
	requests := map[string]int{}
	for i, e := range elems {
		nad, err := s.Clients.NAD.K8sCniCncfIoV1().NetworkAttachmentDefinitions(e.Namespace).Get(ctx, e.Name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("pod %s network %s/%s: %w", key, e.Namespace, e.Name, err)
		}
		r := netReq{ref: policy.NetworkRef{Namespace: e.Namespace, Name: e.Name}, ifname: e.InterfaceRequest,
			resource: nad.Annotations[resourceNameAnnotation]}
		if r.ifname == "" {
			r.ifname = fmt.Sprintf("net%d", i+1)
		}
		if r.resource == "" {
			return nil, fmt.Errorf("pod %s network %s: NAD has no %s annotation", key, r.ref, resourceNameAnnotation)
		}
		for _, ip := range e.IPRequest {
			p, err := netip.ParsePrefix(ip)
			if err != nil {
				return nil, fmt.Errorf("pod %s network %s: ips: %w", key, r.ref, err)
			}
			r.ips = append(r.ips, p)
		}
		requests[r.resource]++
		reqs = append(reqs, r)
	}

	// The kubelet admits the pod: Allocate through the device plugin.
	container := pod.Spec.Containers[0].Name
	var ids map[string][]string
	if len(requests) > 0 {
		alloc, err := s.Node.kubelet.RunPod(ctx, kubeletsim.Pod{Namespace: pod.Namespace, Name: pod.Name,
			Containers: []kubeletsim.Container{{Name: container, Requests: requests}}})
		if err != nil {
			return nil, fmt.Errorf("pod %s: kubelet: %w", key, err)
		}
		ids = map[string][]string{}
		for _, e := range s.Node.podRes.Pods() {
			if e.Namespace == pod.Namespace && e.Name == pod.Name {
				for _, c := range e.Containers {
					for _, d := range c.Devices {
						ids[d.ResourceName] = append(ids[d.ResourceName], d.DeviceIds...)
					}
				}
			}
		}
		_ = alloc
		for r := range ids {
			slices.Sort(ids[r])
		}
		// Extended resources as the scheduler would have seen them.
		rl := corev1.ResourceList{}
		for r, n := range requests {
			rl[corev1.ResourceName(r)] = *resource.NewQuantity(int64(n), resource.DecimalSI)
		}
		pod.Spec.Containers[0].Resources.Requests = rl
		pod.Spec.Containers[0].Resources.Limits = rl.DeepCopy()
	}

	// CNI ADD: move each VF into the pod's namespace.
	p := &Pod{Namespace: pod.Namespace, Name: pod.Name, nsName: pod.Namespace + "_" + pod.Name}
	if p.NS, err = datapath.NewNetns(p.nsName); err != nil {
		s.Node.kubelet.RemovePod(pod.Namespace, pod.Name)
		return nil, fmt.Errorf("pod %s: %w", key, err)
	}
	// Answer ARP only for the addresses of the interface asked, as each VF
	// is its own port: otherwise a pod on two networks of one bridge
	// answers for one network's address on the other's VF.
	if err := datapath.Do(p.NS, func() error {
		for _, kv := range [][2]string{{"arp_ignore", "1"}, {"arp_announce", "2"}} {
			for _, dev := range []string{"all", "default"} {
				if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+dev+"/"+kv[0], []byte(kv[1]), 0o644); err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		_ = s.removePodNetns(p)
		s.Node.kubelet.RemovePod(pod.Namespace, pod.Name)
		return nil, fmt.Errorf("pod %s: sysctls: %w", key, err)
	}
	next := map[string]int{}
	var statuses []nadv1.NetworkStatus
	for _, r := range reqs {
		id := ids[r.resource][next[r.resource]]
		next[r.resource]++
		v, ok := s.Node.vfs[id]
		if !ok {
			return nil, fmt.Errorf("pod %s network %s: device %s: %w", key, r.ref, id, errNoVF)
		}
		mac, err := cniAdd(p.NS, v, r.ifname, r.ips)
		if err != nil {
			_ = s.removePodNetns(p)
			s.Node.kubelet.RemovePod(pod.Namespace, pod.Name)
			return nil, fmt.Errorf("pod %s network %s: %w", key, r.ref, err)
		}
		att := &PodAttachment{Network: r.ref, Interface: r.ifname, VFPCI: id, Representor: v.rep, vf: v}
		st := nadv1.NetworkStatus{Name: r.ref.String(), Interface: r.ifname, Mac: mac,
			DeviceInfo: &nadv1.DeviceInfo{Type: nadv1.DeviceInfoTypePCI, Version: "1.1.0", Pci: &nadv1.PciDevice{PciAddress: id}}}
		for _, ip := range r.ips {
			att.IPs = append(att.IPs, ip.Addr())
			st.IPs = append(st.IPs, ip.Addr().String())
		}
		statuses = append(statuses, st)
		p.Attachments = append(p.Attachments, att)
	}
	status, _ := json.Marshal(statuses)
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[nadv1.NetworkStatusAnnot] = string(status)

	// The API object, bound to this node and running.
	pod.Spec.NodeName = s.NodeName
	created, err := s.Clients.Kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		_ = s.removePodNetns(p)
		s.Node.kubelet.RemovePod(pod.Namespace, pod.Name)
		return nil, fmt.Errorf("create pod %s: %w", key, err)
	}
	created.Status.Phase = corev1.PodRunning
	if _, err := s.Clients.Kube.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return nil, fmt.Errorf("pod %s status: %w", key, err)
	}
	s.mu.Lock()
	s.pods[key] = p
	s.mu.Unlock()
	return p, nil
}

// cniAdd does what accelerated-bridge-cni does for one VF: representor up
// on the bridge, VF netdev into the pod's namespace, renamed, addressed.
func cniAdd(ns netns.NsHandle, v vf, ifname string, ips []netip.Prefix) (string, error) {
	br, err := netlink.LinkByName(Bridge)
	if err != nil {
		return "", err
	}
	rep, err := netlink.LinkByName(v.rep)
	if err != nil {
		return "", fmt.Errorf("representor %s: %w", v.rep, err)
	}
	if err := netlink.LinkSetMaster(rep, br); err != nil {
		return "", fmt.Errorf("representor %s on %s: %w", v.rep, Bridge, err)
	}
	if err := netlink.LinkSetUp(rep); err != nil {
		return "", err
	}
	link, err := netlink.LinkByName(v.netdev)
	if err != nil {
		return "", fmt.Errorf("VF netdev %s: %w", v.netdev, err)
	}
	if err := netlink.LinkSetNsFd(link, int(ns)); err != nil {
		return "", fmt.Errorf("move %s into the pod: %w", v.netdev, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return "", err
	}
	defer h.Close()
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	link, err = h.LinkByName(v.netdev)
	if err != nil {
		return "", err
	}
	if err := h.LinkSetName(link, ifname); err != nil {
		return "", fmt.Errorf("rename %s to %s: %w", v.netdev, ifname, err)
	}
	for _, ip := range ips {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.Addr().AsSlice(), Mask: net.CIDRMask(ip.Bits(), ip.Addr().BitLen())}}
		if ip.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, addr); err != nil {
			return "", fmt.Errorf("address %s on %s: %w", ip, ifname, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return "", err
	}
	return link.Attrs().HardwareAddr.String(), nil
}

// DeletePod deletes the Pod object, and, as the kubelet and the CNI do,
// frees its devices and gives the VFs back to the host (representors leave
// the bridge), so a later pod can get the same VF.
func (s *Sandbox) DeletePod(ctx context.Context, namespace, name string) error {
	key := namespace + "/" + name
	s.mu.Lock()
	p := s.pods[key]
	delete(s.pods, key)
	s.mu.Unlock()
	zero := int64(0)
	if err := s.Clients.Kube.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		return fmt.Errorf("delete pod %s: %w", key, err)
	}
	if p == nil {
		return nil
	}
	s.mu.Lock()
	for k, srv := range s.servers {
		if k.pod == key {
			_ = srv.Close()
			delete(s.servers, k)
		}
	}
	s.mu.Unlock()
	s.Node.kubelet.RemovePod(namespace, name)
	return s.removePodNetns(p)
}

func (s *Sandbox) removePodNetns(p *Pod) error {
	var errs []string
	h, err := netlink.NewHandleAt(p.NS)
	if err == nil {
		root, _ := netns.Get()
		for _, a := range p.Attachments {
			if l, err := h.LinkByName(a.Interface); err == nil {
				_ = h.LinkSetDown(l)
				_ = h.LinkSetName(l, a.vf.netdev)
				if err := h.LinkSetNsFd(l, int(root)); err != nil {
					errs = append(errs, fmt.Sprintf("VF %s back to the host: %v", a.vf.netdev, err))
				}
			}
			if host, err := netlink.LinkByName(a.vf.netdev); err == nil {
				addrs, _ := netlink.AddrList(host, netlink.FAMILY_ALL)
				for i := range addrs {
					_ = netlink.AddrDel(host, &addrs[i])
				}
			}
			if rep, err := netlink.LinkByName(a.Representor); err == nil {
				_ = netlink.LinkSetNoMaster(rep)
			}
		}
		_ = root.Close()
		h.Close()
	}
	_ = p.NS.Close()
	if err := netns.DeleteNamed(p.nsName); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("pod %s: %s", p.Key(), strings.Join(errs, "; "))
	}
	return nil
}
