package sandbox

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// RemoteNamespace is the Namespace of every remote pod: not a valid
// Kubernetes namespace name, so no policy's selector can ever name it and
// its Key cannot clash with a local pod's.
const RemoteNamespace = "(remote)"

// AddRemote runs a pod of another node on network: a network namespace
// behind the uplink of the PF that network's resource takes its VFs from,
// with its own MAC (the veth on the outside namespace's bridge) and the given
// static addresses (CIDR form, in the network's subnets). It has no Pod
// object, so policies can select it only as an ipBlock peer, and no policy
// of its own: only the local pods' rules decide its connections (see
// Expected). Names are unique among remote pods.
func (s *Sandbox) AddRemote(ctx context.Context, network policy.NetworkRef, name string, cidrs ...string) (*Pod, error) {
	key := RemoteNamespace + "/" + name
	nad, err := s.Clients.NAD.K8sCniCncfIoV1().NetworkAttachmentDefinitions(network.Namespace).Get(ctx, network.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("remote pod %s on %s: %w", name, network, err)
	}
	res := nad.Annotations[resourceNameAnnotation]
	pf, ok := resourcePF[res]
	if !ok {
		return nil, fmt.Errorf("remote pod %s on %s: the NAD's resource %q is no PF's of the sandbox NIC", name, network, res)
	}
	var ips []netip.Prefix
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("remote pod %s: address: %w", name, err)
		}
		ips = append(ips, p)
	}
	s.mu.Lock()
	if _, dup := s.pods[key]; dup {
		s.mu.Unlock()
		return nil, fmt.Errorf("remote pod %s exists", name)
	}
	s.remoteSeq++
	port := fmt.Sprintf("rp%d", s.remoteSeq) // the remote pod's port on the outside bridge
	s.mu.Unlock()

	p := &Pod{Namespace: RemoteNamespace, Name: name, nsName: "remote_" + name, Remote: true}
	if p.NS, err = datapath.NewNetns(p.nsName); err != nil {
		return nil, fmt.Errorf("remote pod %s: %w", name, err)
	}
	err = wireRemote(s.Node.outside[pf], p.NS, port, ips)
	if err != nil {
		_ = s.removeRemoteNetns(p)
		return nil, fmt.Errorf("remote pod %s behind %s: %w", name, s.Node.nic.PFs[pf].Uplink, err)
	}
	att := &PodAttachment{Network: network, Interface: "eth0", Representor: s.Node.nic.PFs[pf].Uplink}
	for _, ip := range ips {
		att.IPs = append(att.IPs, ip.Addr())
	}
	p.Attachments = []*PodAttachment{att}
	s.mu.Lock()
	s.pods[key] = p
	s.mu.Unlock()
	return p, nil
}

// wireRemote gives remote pod namespace ns its interface eth0: a veth whose
// peer (port) is a port of the outside bridge in outside.
func wireRemote(outside, ns netns.NsHandle, port string, ips []netip.Prefix) error {
	oh, err := netlink.NewHandleAt(outside)
	if err != nil {
		return err
	}
	defer oh.Close()
	if err := oh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}); err != nil {
		return fmt.Errorf("veth %s <-> eth0: %w", port, err)
	}
	ext, err := oh.LinkByName(OutsideBridge)
	if err != nil {
		return err
	}
	pl, err := oh.LinkByName(port)
	if err != nil {
		return err
	}
	if err := oh.LinkSetMaster(pl, ext); err != nil {
		return fmt.Errorf("%s on %s: %w", port, OutsideBridge, err)
	}
	if err := oh.LinkSetUp(pl); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	link, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	for _, ip := range ips {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip.Addr().AsSlice(), Mask: net.CIDRMask(ip.Bits(), ip.Addr().BitLen())}}
		if ip.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("address %s: %w", ip, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		return err
	}
	return nil
}

// DeleteRemote stops a remote pod: its servers close and its namespace goes
// (with it its veth and that veth's port on the outside bridge).
func (s *Sandbox) DeleteRemote(name string) error {
	key := RemoteNamespace + "/" + name
	s.mu.Lock()
	p := s.pods[key]
	delete(s.pods, key)
	for k, srv := range s.servers {
		if k.pod == key {
			_ = srv.Close()
			delete(s.servers, k)
		}
	}
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	return s.removeRemoteNetns(p)
}

func (s *Sandbox) removeRemoteNetns(p *Pod) error {
	_ = p.NS.Close()
	if err := netns.DeleteNamed(p.nsName); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("remote pod %s: %w", p.Name, err)
	}
	return nil
}

// InterfaceMAC is the MAC address of p's interface on network, read in p's
// namespace (a remote pod's own MAC, or a local pod's VF's).
func InterfaceMAC(p *Pod, network policy.NetworkRef) (net.HardwareAddr, error) {
	a := p.Attachment(network)
	if a == nil {
		return nil, fmt.Errorf("pod %s is not on %s", p.Key(), network)
	}
	h, err := netlink.NewHandleAt(p.NS)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(a.Interface)
	if err != nil {
		return nil, fmt.Errorf("pod %s interface %s: %w", p.Key(), a.Interface, err)
	}
	return l.Attrs().HardwareAddr, nil
}

// Uplinks are the PFs' uplink netdevs, PF 0 first.
func (n *Node) Uplinks() []string {
	var out []string
	for _, pf := range n.nic.PFs {
		out = append(out, pf.Uplink)
	}
	return out
}
