package e2e

import (
	"fmt"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/sandbox"
)

// Remote pods are pods of other nodes: addresses behind the PF's uplink, in
// the sandbox's outside namespace, with their own MACs and no Pod objects.
// Their connections cross the node's bridge through the uplink, and only
// the local pod's rules decide them.

// remoteAddrs are a remote pod's addresses in test subnet n (host >= 100,
// so they never collide with the local pods').
func remoteAddrs(n, host int) []string {
	return []string{fmt.Sprintf("10.20.%d.%d/24", n, host), fmt.Sprintf("fd20:%d::%d/64", n, host)}
}

// A default-deny-ingress pod is reachable from the one outside address an
// ipBlock allows, and not from another outside address nor from a local
// pod; its own connections out (egress not isolated) and their replies
// flow.
func TestRemoteIngressFromIPBlock(t *testing.T) {
	w := newWorld(t)
	w.namespace("rem-in", nil)
	net := w.nad("rem-in", "net", "cx6dx_p0")
	server := w.pod("rem-in", "server", app("server"), []attach{on(net, addrs(30, 2)...)})
	client := w.pod("rem-in", "client", app("client"), []attach{on(net, addrs(30, 3)...)})
	friend := w.remote(net, "rem-in-friend", remoteAddrs(30, 100)...)
	foe := w.remote(net, "rem-in-foe", remoteAddrs(30, 101)...)
	all := pods(server, client, friend, foe)
	m := w.expect(net, all, tcp80, udp53)
	w.want(m, foe, server, tcp80, true) // open before any policy
	w.want(m, server, foe, udp53, true)
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: deny-ingress, namespace: rem-in, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec: {podSelector: {}, policyTypes: [Ingress]}
---
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: from-friend, namespace: rem-in, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{ipBlock: {cidr: 10.20.30.100/32}}, {ipBlock: {cidr: "fd20:30::100/128"}}]
`)
	m = w.expect(net, all, tcp80, udp53, tcp80v6)
	w.want(m, friend, server, tcp80, true)
	w.want(m, friend, server, udp53, true)
	w.want(m, friend, server, tcp80v6, true)
	w.want(m, foe, server, tcp80, false)
	w.want(m, foe, server, tcp80v6, false)
	w.want(m, client, server, tcp80, false)
	w.want(m, friend, client, tcp80, false) // client is isolated too, and allows nobody
	// Egress is not isolated: out to anyone, and the replies come back in
	// through the isolated ingress.
	w.want(m, server, foe, tcp80, true)
	w.want(m, server, friend, udp53, true)
	w.want(m, client, foe, tcp80v6, true)
}

// An egress-isolated pod may reach one outside address, on one port; the
// replies come back. Connections others open to it (ingress not isolated)
// are answered through its egress isolation.
func TestRemoteEgressToOneOutsideAddress(t *testing.T) {
	w := newWorld(t)
	w.namespace("rem-eg", nil)
	net := w.nad("rem-eg", "net", "cx6dx_p0")
	a := w.pod("rem-eg", "a", app("a"), []attach{on(net, addrs(31, 2)...)})
	b := w.pod("rem-eg", "b", app("b"), []attach{on(net, addrs(31, 3)...)})
	api := w.remote(net, "rem-eg-api", remoteAddrs(31, 100)...)
	other := w.remote(net, "rem-eg-other", remoteAddrs(31, 101)...)
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: a-to-api, namespace: rem-eg, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.20.31.100/32}}]
    ports: [{protocol: TCP, port: 80}]
`)
	m := w.expect(net, pods(a, b, api, other), tcp80, udp53, tcp80v6)
	w.want(m, a, api, tcp80, true)
	w.want(m, a, api, udp53, false)
	w.want(m, a, api, tcp80v6, false) // the block is IPv4 only
	w.want(m, a, other, tcp80, false)
	w.want(m, a, b, tcp80, false)
	w.want(m, other, a, tcp80, true) // replies leave through the egress isolation
	w.want(m, api, a, udp53, true)
	w.want(m, b, a, tcp80, true)
	w.want(m, b, other, tcp80, true) // b is not isolated
}

// On the second PF (its own uplink and outside network), a pod isolated
// both ways: ingress from an ipBlock with an except, egress to the
// except's range on UDP only.
func TestRemoteBothDirectionsOnSecondPF(t *testing.T) {
	w := newWorld(t)
	w.namespace("rem-p1", nil)
	net := w.nad("rem-p1", "net", "cx6dx_p1")
	server := w.pod("rem-p1", "server", app("server"), []attach{on(net, addrs(32, 2)...)})
	client := w.pod("rem-p1", "client", app("client"), []attach{on(net, addrs(32, 3)...)})
	near := w.remote(net, "rem-p1-near", remoteAddrs(32, 100)...)
	far := w.remote(net, "rem-p1-far", remoteAddrs(32, 200)...)
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: both, namespace: rem-p1, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{ipBlock: {cidr: 10.20.32.0/24, except: [10.20.32.128/25]}}]
  egress:
  - to: [{ipBlock: {cidr: 10.20.32.128/25}}]
    ports: [{protocol: UDP}]
`)
	m := w.expect(net, pods(server, client, near, far), tcp80, udp53)
	w.want(m, near, server, tcp80, true)
	w.want(m, near, server, udp53, true)
	w.want(m, client, server, tcp80, true)
	w.want(m, far, server, tcp80, false)
	w.want(m, server, far, udp53, true)
	w.want(m, server, far, tcp80, false)
	w.want(m, server, near, udp53, false)
	w.want(m, server, client, tcp80, false)
	w.want(m, client, far, tcp80, true) // client is not isolated
}

// The topology the remote scenarios rely on: each PF's uplink is a port of
// the pods' bridge, and a remote pod's frames cross it: after traffic, the
// bridge has learnt the remote pod's MAC on its own PF's uplink, not on the
// other's nor on a representor.
func TestRemotePodsAreBehindTheUplink(t *testing.T) {
	w := newWorld(t)
	w.namespace("rem-up", nil)
	nets := []policy.NetworkRef{w.nad("rem-up", "net0", "cx6dx_p0"), w.nad("rem-up", "net1", "cx6dx_p1")}
	br, err := netlink.LinkByName(sandbox.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	uplinks := sb.Node.Uplinks()
	for i, up := range uplinks {
		l, err := netlink.LinkByName(up)
		if err != nil {
			t.Fatalf("uplink %s: %v", up, err)
		}
		if l.Attrs().MasterIndex != br.Attrs().Index {
			t.Errorf("uplink %s is not a port of %s", up, sandbox.Bridge)
		}
		n := 33 + i
		local := w.pod("rem-up", fmt.Sprintf("p%d", i), app("p"), []attach{on(nets[i], addrs(n, 2)...)})
		remote := w.remote(nets[i], fmt.Sprintf("rem-up-r%d", i), remoteAddrs(n, 100)...)
		m := w.expect(nets[i], pods(local, remote), tcp80, tcp80v6)
		w.want(m, local, remote, tcp80, true)
		w.want(m, remote, local, tcp80v6, true)
		mac, err := sandbox.InterfaceMAC(remote, nets[i])
		if err != nil {
			t.Fatal(err)
		}
		fdb, err := netlink.NeighList(0, unix.AF_BRIDGE)
		if err != nil {
			t.Fatal(err)
		}
		var ports []string
		for _, e := range fdb {
			if e.HardwareAddr.String() == mac.String() && e.MasterIndex == br.Attrs().Index {
				if l, err := netlink.LinkByIndex(e.LinkIndex); err == nil {
					ports = append(ports, l.Attrs().Name)
				}
			}
		}
		if len(ports) != 1 || ports[0] != up {
			t.Errorf("remote pod %s (MAC %s) learnt by %s on %v, want on uplink %s only", remote.Key(), mac, sandbox.Bridge, ports, up)
		}
	}
}
