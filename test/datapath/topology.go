package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Options configure a Topology. The zero value is usable.
type Options struct {
	// Bridge names the bridge the representors are attached to (default "br0").
	Bridge string
	// VLANFiltering turns on the bridge's VLAN filtering, as
	// accelerated-bridge-cni does when a network has a VLAN or trunk.
	VLANFiltering bool
	// Subnet4 and Subnet6 hold the pods' addresses, numbered from .2 in the
	// order pods are added (defaults 10.10.0.0/24 and fd00:10::/64).
	Subnet4, Subnet6 netip.Prefix
	// Timeout bounds every probe (default 1s). A dropped packet costs this
	// much, a delivered one only a round trip.
	Timeout time.Duration
	// PF selects the switchdev port backend (see switchdev.go): pods and
	// the uplink are VFs of this PF, their representors the bridge ports.
	// "netdevsim" makes a netdevsim device for it. Default SwitchdevPF()
	// (-mnptc.pf, $MNPTC_HARDWARE_PF); "" there too: veth pairs.
	PF string
}

// PodOptions configure one pod.
type PodOptions struct {
	// VLAN makes the representor an access port of this VLAN (PVID, untagged).
	// Needs Options.VLANFiltering.
	VLAN uint16
	// Trunk makes the representor a trunk carrying these VLANs tagged; the
	// pod's addresses then live on eth0.<Trunk[0]>. Needs Options.VLANFiltering.
	Trunk []uint16
	// IPv4 and IPv6 override the next addresses of the subnets.
	IPv4, IPv6 netip.Prefix
}

// Topology is a bridge with pods attached through representors and,
// optionally, an uplink to the rest of the network with remote pods behind
// it.
type Topology struct {
	opts   Options
	bridge netlink.Link
	pf     *switchdevPF // nil: veth pairs

	mu     sync.Mutex
	pods   []*Pod
	uplink *Uplink
}

// Pod is a network namespace holding the VF end of a veth pair.
type Pod struct {
	Name string
	// NS is the pod's network namespace, also reachable as `ip -n <Name>`.
	NS netns.NsHandle
	// Rep is the representor: the host end of the veth pair, a bridge port
	// (empty for a remote pod).
	Rep string
	// RepIndex is the representor's ifindex in the host namespace.
	RepIndex int
	// Iface is the interface inside the pod that carries its addresses
	// ("eth0", or "eth0.<vid>" on a trunk).
	Iface string
	// MAC is the hardware address of the pod's VF (eth0).
	MAC net.HardwareAddr
	// IPv4 and IPv6 are the pod's addresses.
	IPv4, IPv6 netip.Addr
	// Remote marks a pod of another node, behind the uplink (AddRemotePod).
	Remote bool
	// VF is the VF number of a switchdev topology's pod, -1 otherwise.
	VF int

	topo *Topology
	nl   *netlink.Handle

	mu      sync.Mutex
	servers map[serverKey]*Server
}

// NewTopology creates the bridge; it and everything added to it are
// removed when the test ends.
func NewTopology(t testing.TB, opts Options) *Topology {
	t.Helper()
	RequireBed(t)
	if opts.Bridge == "" {
		opts.Bridge = "br0"
	}
	if !opts.Subnet4.IsValid() {
		opts.Subnet4 = netip.MustParsePrefix("10.10.0.0/24")
	}
	if !opts.Subnet6.IsValid() {
		opts.Subnet6 = netip.MustParsePrefix("fd00:10::/64")
	}
	if opts.Timeout == 0 {
		opts.Timeout = time.Second
	}
	if opts.PF == "" {
		opts.PF = SwitchdevPF()
	}
	topo := &Topology{opts: opts}
	if opts.PF != "" {
		// Acquired before the bridge exists, so released after it is gone.
		pf, err := acquirePF(t, opts.PF)
		if err != nil {
			t.Fatalf("switchdev PF %s: %v", opts.PF, err)
		}
		topo.pf = pf
	}
	off := false
	br := &netlink.Bridge{
		LinkAttrs:         netlink.LinkAttrs{Name: opts.Bridge},
		VlanFiltering:     &opts.VLANFiltering,
		MulticastSnooping: &off, // flood ND/multicast: no querier in the bed
	}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("create bridge %s: %v", opts.Bridge, err)
	}
	remember(&created.bridges, opts.Bridge)
	t.Cleanup(func() {
		if err := netlink.LinkDel(br); err != nil {
			t.Errorf("delete bridge %s: %v", opts.Bridge, err)
		}
	})
	link, err := netlink.LinkByName(opts.Bridge)
	if err != nil {
		t.Fatalf("bridge %s: %v", opts.Bridge, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatalf("set bridge %s up: %v", opts.Bridge, err)
	}
	topo.bridge = link
	return topo
}

// Bridge returns the bridge's name.
func (topo *Topology) Bridge() string { return topo.opts.Bridge }

// Switchdev describes the PF of a switchdev topology, nil for veth pairs.
func (topo *Topology) Switchdev() *SwitchdevInfo {
	if topo.pf == nil {
		return nil
	}
	i := topo.pf.info
	return &i
}

// Pods returns the pods in the order they were added.
func (topo *Topology) Pods() []*Pod {
	topo.mu.Lock()
	defer topo.mu.Unlock()
	return append([]*Pod(nil), topo.pods...)
}

// PodByAddr returns the pod that owns addr, or nil.
func (topo *Topology) PodByAddr(addr netip.Addr) *Pod {
	topo.mu.Lock()
	defer topo.mu.Unlock()
	addr = addr.Unmap()
	for _, p := range topo.pods {
		if p.IPv4 == addr || p.IPv6 == addr {
			return p
		}
	}
	return nil
}

// nthAddr returns the n-th address of prefix (n=0 is the network address).
func nthAddr(prefix netip.Prefix, n int) (netip.Prefix, error) {
	a := prefix.Masked().Addr().AsSlice()
	carry := n
	for i := len(a) - 1; i >= 0 && carry > 0; i-- {
		sum := int(a[i]) + carry
		a[i] = byte(sum)
		carry = sum >> 8
	}
	addr, _ := netip.AddrFromSlice(a)
	if carry != 0 || !prefix.Contains(addr) {
		return netip.Prefix{}, fmt.Errorf("subnet %s has no address number %d", prefix, n)
	}
	return netip.PrefixFrom(addr, prefix.Bits()), nil
}

// AddPod creates pod name: namespace name, veth pair rep-<name> (host,
// attached to the bridge) ↔ eth0 (in the pod), addresses, routes, VLANs.
// Names longer than 11 characters are refused (interface names are 15).
func (topo *Topology) AddPod(t testing.TB, name string, opts PodOptions) *Pod {
	t.Helper()
	pod, err := topo.addPod(t, name, opts)
	if err != nil {
		t.Fatalf("add pod %s: %v", name, err)
	}
	return pod
}

func (topo *Topology) addPod(t testing.TB, name string, opts PodOptions) (*Pod, error) {
	if name == "" || len(name) > 11 {
		return nil, fmt.Errorf("pod name %q must have 1 to 11 characters", name)
	}
	if (opts.VLAN != 0 || len(opts.Trunk) > 0) && !topo.opts.VLANFiltering {
		return nil, errors.New("VLAN or Trunk needs Options.VLANFiltering")
	}
	if opts.VLAN != 0 && len(opts.Trunk) > 0 {
		return nil, errors.New("a representor is either an access port (VLAN) or a trunk, not both")
	}
	if err := topo.nextAddrs(&opts); err != nil {
		return nil, err
	}
	ns, nl, err := podNetns(t, name)
	if err != nil {
		return nil, err
	}
	pod := &Pod{Name: name, NS: ns, Rep: "rep-" + name, Iface: "eth0", topo: topo, nl: nl, VF: -1,
		IPv4: opts.IPv4.Addr(), IPv6: opts.IPv6.Addr(), servers: map[serverKey]*Server{}}
	if topo.pf != nil {
		v, err := topo.pf.take(t, "pod "+name)
		if err != nil {
			return nil, err
		}
		pod.Rep, pod.VF = v.rep, v.n
		if err := topo.pf.attach(t, v, name, ns, nl, topo.bridge.Attrs().Index, false); err != nil {
			return nil, fmt.Errorf("VF %d (representor %s): %w", v.n, v.rep, err)
		}
	} else if err := topo.addVethPort(t, pod.Rep, "eth0", ns); err != nil {
		return nil, err
	}
	rep, err := netlink.LinkByName(pod.Rep)
	if err != nil {
		return nil, err
	}
	pod.RepIndex = rep.Attrs().Index
	if err := topo.configureBridgePort(rep, opts); err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(rep); err != nil {
		return nil, fmt.Errorf("set %s up: %w", pod.Rep, err)
	}
	if err := pod.configureInside(opts); err != nil {
		return nil, err
	}
	topo.mu.Lock()
	topo.pods = append(topo.pods, pod)
	topo.mu.Unlock()
	t.Cleanup(pod.stopServers)
	return pod, nil
}

// addVethPort creates a port of the veth backend: host on the bridge ↔
// peer in namespace ns (a pod's rep-<name> ↔ eth0, the uplink's
// up-<bridge> ↔ the outside wire), deleted when t ends.
func (topo *Topology) addVethPort(t testing.TB, host, peer string, ns netns.NsHandle) error {
	// The peer is created directly inside the namespace.
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: host, MasterIndex: topo.bridge.Attrs().Index},
		PeerName:      peer,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", host, err)
	}
	t.Cleanup(func() {
		// Deleting the host end deletes its peer; the namespace may be gone already.
		if l, err := netlink.LinkByName(host); err == nil {
			_ = netlink.LinkDel(l)
		}
	})
	return nil
}

// configureBridgePort sets the representor's VLANs the way
// accelerated-bridge-cni does: the default VLAN 1 is replaced by the pod's.
func (topo *Topology) configureBridgePort(rep netlink.Link, opts PodOptions) error {
	if opts.VLAN == 0 && len(opts.Trunk) == 0 {
		return nil
	}
	if err := netlink.BridgeVlanDel(rep, 1, true, true, false, true); err != nil {
		return fmt.Errorf("remove default VLAN from %s: %w", rep.Attrs().Name, err)
	}
	if opts.VLAN != 0 {
		if err := netlink.BridgeVlanAdd(rep, opts.VLAN, true, true, false, true); err != nil {
			return fmt.Errorf("add VLAN %d to %s: %w", opts.VLAN, rep.Attrs().Name, err)
		}
		return nil
	}
	for _, vid := range opts.Trunk {
		if err := netlink.BridgeVlanAdd(rep, vid, false, false, false, true); err != nil {
			return fmt.Errorf("add trunk VLAN %d to %s: %w", vid, rep.Attrs().Name, err)
		}
	}
	return nil
}

func (p *Pod) configureInside(opts PodOptions) error {
	lo, err := p.nl.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := p.nl.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in %s: %w", p.Name, err)
	}
	vf, err := p.nl.LinkByName("eth0")
	if err != nil {
		return err
	}
	p.MAC = vf.Attrs().HardwareAddr
	if err := p.nl.LinkSetUp(vf); err != nil {
		return fmt.Errorf("set eth0 up in %s: %w", p.Name, err)
	}
	link := vf
	if len(opts.Trunk) > 0 {
		p.Iface = fmt.Sprintf("eth0.%d", opts.Trunk[0])
		vlan := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: p.Iface, ParentIndex: vf.Attrs().Index},
			VlanId: int(opts.Trunk[0])}
		if err := p.nl.LinkAdd(vlan); err != nil {
			return fmt.Errorf("create %s in %s: %w", p.Iface, p.Name, err)
		}
		if link, err = p.nl.LinkByName(p.Iface); err != nil {
			return err
		}
		if err := p.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up in %s: %w", p.Iface, p.Name, err)
		}
	}
	for _, prefix := range []netip.Prefix{opts.IPv4, opts.IPv6} {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: prefix.Addr().AsSlice(),
			Mask: net.CIDRMask(prefix.Bits(), prefix.Addr().BitLen())}}
		if prefix.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD // usable at once, no 1-2 s of DAD
		}
		if err := p.nl.AddrAdd(link, addr); err != nil {
			return fmt.Errorf("add %s to %s in %s: %w", prefix, p.Iface, p.Name, err)
		}
	}
	return nil
}

// podNetns creates a pod's named network namespace and a netlink handle in
// it, both removed when t ends.
func podNetns(t testing.TB, name string) (netns.NsHandle, *netlink.Handle, error) {
	ns, err := newNamedNetns(name)
	if err != nil {
		return ns, nil, err
	}
	t.Cleanup(func() {
		_ = ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return ns, nil, fmt.Errorf("netlink handle in netns %s: %w", name, err)
	}
	t.Cleanup(nl.Close)
	return ns, nl, nil
}
