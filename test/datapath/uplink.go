package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Uplink is the bridge's port towards the rest of the network: the host end
// of a veth pair on the bridge, as the uplink representor of the PF is on
// an SR-IOV node, whose other end (Iface) is in the "outside" network
// namespace. The pods of other nodes (AddRemotePod) sit behind it.
type Uplink struct {
	// Dev is the bridge port, "up-<bridge>", in the host namespace.
	Dev string
	// Index is Dev's ifindex in the host namespace.
	Index int
	// NSName names the outside namespace ("out-<bridge>", also reachable as
	// `ip -n <NSName>`), NS is a handle to it.
	NSName string
	NS     netns.NsHandle
	// Iface is the outside end of the veth pair, "eth0" in NS: the wire
	// to the rest of the network.
	Iface string
	// VF is the VF standing for the uplink in a switchdev topology (Dev is
	// its representor, Iface its netdev), -1 otherwise.
	VF int

	nl *netlink.Handle
}

// Uplink returns the topology's uplink, nil before AddUplink.
func (topo *Topology) Uplink() *Uplink {
	topo.mu.Lock()
	defer topo.mu.Unlock()
	return topo.uplink
}

// AddUplink creates the uplink (once; later calls return it): veth
// up-<bridge> on the bridge ↔ eth0 in the outside namespace out-<bridge>.
// The uplink is an untagged port: on a VLAN-filtering bridge it carries
// VLAN 1, so remote pods are only for bridges without VLANs.
func (topo *Topology) AddUplink(t testing.TB) *Uplink {
	t.Helper()
	if up := topo.Uplink(); up != nil {
		return up
	}
	up, err := topo.addUplink(t)
	if err != nil {
		t.Fatalf("add uplink to %s: %v", topo.opts.Bridge, err)
	}
	return up
}

func (topo *Topology) addUplink(t testing.TB) (*Uplink, error) {
	up := &Uplink{Dev: "up-" + topo.opts.Bridge, NSName: "out-" + topo.opts.Bridge, Iface: "eth0", VF: -1}
	if len(up.Dev) > 15 {
		return nil, fmt.Errorf("bridge name %q too long for an uplink name", topo.opts.Bridge)
	}
	ns, err := newNamedNetns(up.NSName)
	if err != nil {
		return nil, err
	}
	up.NS = ns
	t.Cleanup(func() {
		_ = ns.Close()
		if err := netns.DeleteNamed(up.NSName); err != nil {
			t.Errorf("delete netns %s: %v", up.NSName, err)
		}
	})
	if up.nl, err = netlink.NewHandleAt(ns); err != nil {
		return nil, fmt.Errorf("netlink handle in netns %s: %w", up.NSName, err)
	}
	t.Cleanup(up.nl.Close)
	if topo.pf != nil {
		// A VF stands for the uplink: its representor is the bridge's
		// uplink port, its netdev the outside wire (trusted: it carries
		// the remote pods' MACs).
		v, err := topo.pf.take(t, "the uplink")
		if err != nil {
			return nil, err
		}
		up.Dev, up.VF = v.rep, v.n
		if err := topo.pf.attach(t, v, up.NSName, ns, up.nl, topo.bridge.Attrs().Index, true); err != nil {
			return nil, fmt.Errorf("VF %d (representor %s) as the uplink: %w", v.n, v.rep, err)
		}
	} else if err := topo.addVethPort(t, up.Dev, up.Iface, ns); err != nil {
		return nil, err
	}
	link, err := netlink.LinkByName(up.Dev)
	if err != nil {
		return nil, err
	}
	up.Index = link.Attrs().Index
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", up.Dev, err)
	}
	for _, name := range []string{"lo", up.Iface} {
		l, err := up.nl.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("%s in netns %s: %w", name, up.NSName, err)
		}
		if err := up.nl.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set %s up in netns %s: %w", name, up.NSName, err)
		}
	}
	topo.mu.Lock()
	topo.uplink = up
	topo.mu.Unlock()
	return up, nil
}

// AddRemotePod adds a pod of another node: it lives behind the uplink (the
// uplink is created if there is none). It is a macvlan of the outside
// namespace's eth0, in bridge mode, so it has its own MAC address on the
// outside wire, as another node's VF would, and it takes the next
// addresses of the topology's subnets, as pods of the same network on
// other nodes do. The macvlan is moved into a namespace of its own, named
// after the pod and called eth0 there, so that probes, servers and raw
// sockets work on it exactly as on a local pod. The pod has no
// representor (Rep is empty, Remote is true). VLAN options are refused:
// the uplink is untagged.
func (topo *Topology) AddRemotePod(t testing.TB, name string, opts PodOptions) *Pod {
	t.Helper()
	pod, err := topo.addRemotePod(t, name, opts)
	if err != nil {
		t.Fatalf("add remote pod %s: %v", name, err)
	}
	return pod
}

func (topo *Topology) addRemotePod(t testing.TB, name string, opts PodOptions) (*Pod, error) {
	if name == "" || len(name) > 11 {
		return nil, fmt.Errorf("pod name %q must have 1 to 11 characters", name)
	}
	if opts.VLAN != 0 || len(opts.Trunk) > 0 {
		return nil, errors.New("a remote pod is untagged: the uplink carries no VLANs")
	}
	up := topo.AddUplink(t)
	if err := topo.nextAddrs(&opts); err != nil {
		return nil, err
	}
	ns, nl, err := podNetns(t, name)
	if err != nil {
		return nil, err
	}
	pod := &Pod{Name: name, NS: ns, Iface: "eth0", Remote: true, topo: topo, nl: nl, VF: -1,
		IPv4: opts.IPv4.Addr(), IPv6: opts.IPv6.Addr(), servers: map[serverKey]*Server{}}

	parent, err := up.nl.LinkByName(up.Iface)
	if err != nil {
		return nil, err
	}
	// Created in the outside namespace, where its parent is, then moved
	// into the pod's namespace and renamed eth0 there.
	tmp := "mv-" + name
	mv := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: tmp, ParentIndex: parent.Attrs().Index},
		Mode: netlink.MACVLAN_MODE_BRIDGE}
	if err := up.nl.LinkAdd(mv); err != nil {
		return nil, fmt.Errorf("create macvlan %s on %s in %s: %w", tmp, up.Iface, up.NSName, err)
	}
	l, err := up.nl.LinkByName(tmp)
	if err != nil {
		return nil, err
	}
	if err := up.nl.LinkSetNsFd(l, int(ns)); err != nil {
		_ = up.nl.LinkDel(l)
		return nil, fmt.Errorf("move %s into netns %s: %w", tmp, name, err)
	}
	if l, err = nl.LinkByName(tmp); err != nil {
		return nil, err
	}
	if err := nl.LinkSetName(l, pod.Iface); err != nil {
		return nil, fmt.Errorf("rename %s to %s in %s: %w", tmp, pod.Iface, name, err)
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

// ReadMAC reads the MAC address of the pod's eth0 from its namespace now:
// the address the bridge and the TC rules see on its frames.
// Addrs are the pod's addresses (those it has), as the agent gives them
// to the driver with the pod's bridge port.
func (p *Pod) Addrs() []netip.Addr {
	var out []netip.Addr
	for _, a := range []netip.Addr{p.IPv4, p.IPv6} {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

func (p *Pod) ReadMAC() (net.HardwareAddr, error) {
	l, err := p.nl.LinkByName("eth0")
	if err != nil {
		return nil, fmt.Errorf("eth0 in netns %s: %w", p.Name, err)
	}
	return l.Attrs().HardwareAddr, nil
}

// LocalPods returns the pods with a representor on the bridge, in the order
// they were added.
func (topo *Topology) LocalPods() []*Pod {
	var out []*Pod
	for _, p := range topo.Pods() {
		if !p.Remote {
			out = append(out, p)
		}
	}
	return out
}

// nextAddrs fills the addresses opts leaves unset with the next ones of
// the subnets.
func (topo *Topology) nextAddrs(opts *PodOptions) error {
	topo.mu.Lock()
	n := len(topo.pods) + 2
	topo.mu.Unlock()
	var err error
	if !opts.IPv4.IsValid() {
		if opts.IPv4, err = nthAddr(topo.opts.Subnet4, n); err != nil {
			return err
		}
	}
	if !opts.IPv6.IsValid() {
		if opts.IPv6, err = nthAddr(topo.opts.Subnet6, n); err != nil {
			return err
		}
	}
	return nil
}
