package e2e

import (
	"fmt"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/sandbox"
)

// Each test has its own subnet n: 10.20.n.0/24 and fd20:n::/64.
func addrs(n, host int) []string {
	return []string{fmt.Sprintf("10.20.%d.%d/24", n, host), fmt.Sprintf("fd20:%d::%d/64", n, host)}
}

func app(name string) map[string]string { return map[string]string{"app": name} }

func pods(p ...*sandbox.Pod) []*sandbox.Pod { return p }

func TestDefaultDenyIngress(t *testing.T) {
	w := newWorld(t)
	w.namespace("dd-in", nil)
	net := w.nad("dd-in", "net", "cx6dx_p0")
	a := w.pod("dd-in", "a", app("a"), []attach{on(net, addrs(1, 2)...)})
	b := w.pod("dd-in", "b", app("b"), []attach{on(net, addrs(1, 3)...)})
	r := w.remote(net, "dd-in-r", remoteAddrs(1, 100)...)
	m := w.expect(net, pods(a, b, r), tcp80, udp53)
	w.want(m, a, b, tcp80, true)
	w.want(m, r, a, tcp80, true)
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: deny-ingress, namespace: dd-in, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec: {podSelector: {}, policyTypes: [Ingress]}
`)
	m = w.expect(net, pods(a, b, r), tcp80, udp53, sctp7777)
	w.want(m, a, b, tcp80, false)
	w.want(m, b, a, udp53, false)
	w.want(m, b, a, sctp7777, false)
	w.want(m, r, a, tcp80, false)
	w.want(m, r, b, sctp7777, false)
	w.want(m, a, r, tcp80, true) // out and back in: the reply is not ingress
	w.want(m, b, r, sctp7777, true)
}

func TestDefaultDenyEgressRepliesStillFlow(t *testing.T) {
	w := newWorld(t)
	w.namespace("dd-eg", nil)
	w.namespace("dd-eg-other", nil)
	net := w.nad("dd-eg", "net", "cx6dx_p0")
	a := w.pod("dd-eg", "a", app("a"), []attach{on(net, addrs(2, 2)...)})
	b := w.pod("dd-eg", "b", app("b"), []attach{on(net, addrs(2, 3)...)})
	c := w.pod("dd-eg-other", "c", app("c"), []attach{on(net, addrs(2, 4)...)})
	r := w.remote(net, "dd-eg-r", remoteAddrs(2, 100)...)
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: deny-egress, namespace: dd-eg, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec: {podSelector: {}, policyTypes: [Egress]}
`)
	m := w.expect(net, pods(a, b, c, r), tcp80, udp53)
	w.want(m, a, b, tcp80, false)
	w.want(m, a, c, udp53, false)
	w.want(m, a, r, tcp80, false)
	w.want(m, c, r, udp53, true)
	w.want(m, r, a, udp53, true) // the reply leaves through a's egress isolation
	// c opens the connection: a's egress isolation lets the replies out.
	w.want(m, c, a, tcp80, true)
	w.want(m, c, a, udp53, true)
}

func TestAllowFromNamespace(t *testing.T) {
	w := newWorld(t)
	w.namespace("afn", nil)
	w.namespace("afn-friend", map[string]string{"team": "friend"})
	w.namespace("afn-foe", map[string]string{"team": "foe"})
	net := w.nad("afn", "net", "cx6dx_p0")
	server := w.pod("afn", "server", app("server"), []attach{on(net, addrs(3, 2)...)})
	friend := w.pod("afn-friend", "client", app("client"), []attach{on(net, addrs(3, 3)...)})
	foe := w.pod("afn-foe", "client", app("client"), []attach{on(net, addrs(3, 4)...)})
	r := w.remote(net, "afn-r", remoteAddrs(3, 100)...)
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: from-friends, namespace: afn, annotations: {k8s.v1.cni.cncf.io/policy-for: afn/net}}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: friend}}}]
`)
	m := w.expect(net, pods(server, friend, foe, r), tcp80, udp53)
	w.want(m, friend, server, tcp80, true)
	w.want(m, r, server, tcp80, false) // no Pod object: no namespace to select
	w.want(m, server, r, tcp80, true)
	w.want(m, foe, server, tcp80, false)
	w.want(m, server, foe, tcp80, true) // egress not isolated
}

func TestAllowFromPodInNamespace(t *testing.T) {
	w := newWorld(t)
	w.namespace("pin", nil)
	w.namespace("pin-x", map[string]string{"role": "x"})
	w.namespace("pin-y", map[string]string{"role": "y"})
	net := w.nad("pin", "net", "cx6dx_p0")
	server := w.pod("pin", "server", app("server"), []attach{on(net, addrs(4, 2)...)})
	xClient := w.pod("pin-x", "client", app("client"), []attach{on(net, addrs(4, 3)...)})
	xOther := w.pod("pin-x", "other", app("other"), []attach{on(net, addrs(4, 4)...)})
	yClient := w.pod("pin-y", "client", app("client"), []attach{on(net, addrs(4, 5)...)})
	// One peer with both selectors: the namespace AND the pod must match.
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: client-in-x, namespace: pin, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {role: x}}
      podSelector: {matchLabels: {app: client}}
`)
	m := w.expect(net, pods(server, xClient, xOther, yClient), tcp80)
	w.want(m, xClient, server, tcp80, true)
	w.want(m, xOther, server, tcp80, false)
	w.want(m, yClient, server, tcp80, false)
}

func TestIPBlockWithExcept(t *testing.T) {
	w := newWorld(t)
	w.namespace("ipb", nil)
	net := w.nad("ipb", "net", "cx6dx_p0")
	server := w.pod("ipb", "server", app("server"), []attach{on(net, addrs(5, 2)...)})
	a := w.pod("ipb", "a", app("a"), []attach{on(net, addrs(5, 3)...)})
	b := w.pod("ipb", "b", app("b"), []attach{on(net, addrs(5, 4)...)})
	r := w.remote(net, "ipb-r", remoteAddrs(5, 100)...)
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: subnet-but-b, namespace: ipb, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{ipBlock: {cidr: 10.20.5.0/24, except: [10.20.5.4/32]}}]
`)
	m := w.expect(net, pods(server, a, b, r), tcp80, udp53, tcp80v6)
	w.want(m, a, server, tcp80, true)
	w.want(m, r, server, tcp80, true) // in the block, from outside
	w.want(m, r, server, tcp80v6, false)
	w.want(m, b, server, tcp80, false)
	w.want(m, a, server, tcp80v6, false) // the block is IPv4 only
}

func TestPortsEndPortProtocolOnlyAndSCTP(t *testing.T) {
	w := newWorld(t)
	w.namespace("ports", nil)
	net := w.nad("ports", "net", "cx6dx_p0")
	server := w.pod("ports", "server", app("server"), []attach{on(net, addrs(6, 2)...)})
	client := w.pod("ports", "client", app("client"), []attach{on(net, addrs(6, 3)...)})
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: ports, namespace: ports, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - ports:
    - {protocol: TCP, port: 80}
    - {protocol: TCP, port: 5000, endPort: 5010}
    - {protocol: UDP}
    - {protocol: SCTP, port: 7777}
`)
	tcp5000 := sandbox.Probe{Proto: datapath.TCP, Port: 5000}
	tcp5010 := sandbox.Probe{Proto: datapath.TCP, Port: 5010}
	tcp5011 := sandbox.Probe{Proto: datapath.TCP, Port: 5011}
	udp9999 := sandbox.Probe{Proto: datapath.UDP, Port: 9999}
	sctp7000 := sandbox.Probe{Proto: datapath.SCTP, Port: 7000}
	m := w.expect(net, pods(server, client), tcp80, tcp443, tcp5000, tcp5010, tcp5011, udp53, udp9999, sctp7777, sctp7000, tcp80v6)
	for p, want := range map[sandbox.Probe]bool{tcp80: true, tcp443: false, tcp5000: true, tcp5010: true, tcp5011: false,
		udp53: true, udp9999: true, sctp7777: true, sctp7000: false, tcp80v6: true} {
		w.want(m, client, server, p, want)
	}
}

func TestNamedPorts(t *testing.T) {
	w := newWorld(t)
	w.namespace("named", nil)
	net := w.nad("named", "net", "cx6dx_p0")
	server := w.pod("named", "server", app("server"), []attach{on(net, addrs(7, 2)...)}, "http:8080/TCP", "dns:5353/UDP")
	client := w.pod("named", "client", app("client"), []attach{on(net, addrs(7, 3)...)})
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: named, namespace: named, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - ports: [{protocol: TCP, port: http}]
`)
	tcp8080 := sandbox.Probe{Proto: datapath.TCP, Port: 8080}
	udp5353 := sandbox.Probe{Proto: datapath.UDP, Port: 5353}
	m := w.expect(net, pods(server, client), tcp8080, tcp80, udp5353)
	w.want(m, client, server, tcp8080, true)
	w.want(m, client, server, tcp80, false)
	w.want(m, client, server, udp5353, false)
}

func TestIPv6(t *testing.T) {
	w := newWorld(t)
	w.namespace("v6", nil)
	net := w.nad("v6", "net", "cx6dx_p0")
	server := w.pod("v6", "server", app("server"), []attach{on(net, addrs(8, 2)...)})
	a := w.pod("v6", "a", app("a"), []attach{on(net, addrs(8, 3)...)})
	b := w.pod("v6", "b", app("b"), []attach{on(net, addrs(8, 4)...)})
	r := w.remote(net, "v6-r", remoteAddrs(8, 100)...)
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: v6-only, namespace: v6, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{ipBlock: {cidr: "fd20:8::/64", except: ["fd20:8::4/128"]}}]
    ports: [{protocol: TCP, port: 80}]
`)
	m := w.expect(net, pods(server, a, b, r), tcp80v6, tcp443v6, tcp80)
	w.want(m, a, server, tcp80v6, true)
	w.want(m, r, server, tcp80v6, true)
	w.want(m, r, server, tcp443v6, false)
	w.want(m, a, server, tcp443v6, false)
	w.want(m, b, server, tcp80v6, false)
	w.want(m, a, server, tcp80, false)
}

func TestTwoPoliciesUnion(t *testing.T) {
	w := newWorld(t)
	w.namespace("union", nil)
	net := w.nad("union", "net", "cx6dx_p0")
	server := w.pod("union", "server", app("server"), []attach{on(net, addrs(9, 2)...)})
	a := w.pod("union", "a", app("a"), []attach{on(net, addrs(9, 3)...)})
	b := w.pod("union", "b", app("b"), []attach{on(net, addrs(9, 4)...)})
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: a-on-80, namespace: union, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{protocol: TCP, port: 80}]}]
---
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: b-on-443, namespace: union, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{protocol: TCP, port: 443}]}]
`)
	m := w.expect(net, pods(server, a, b), tcp80, tcp443)
	w.want(m, a, server, tcp80, true)
	w.want(m, a, server, tcp443, false)
	w.want(m, b, server, tcp443, true)
	w.want(m, b, server, tcp80, false)
}

// A policy names, in policy-for, a network of another namespace; a network
// of the policy's own namespace with the same name is not affected.
func TestPolicyForAnotherNamespacesNetwork(t *testing.T) {
	w := newWorld(t)
	w.namespace("pfo", nil)
	w.namespace("pfo-net", nil)
	shared := w.nad("pfo-net", "net", "cx6dx_p0")
	local := w.nad("pfo", "net", "cx6dx_p1")
	a := w.pod("pfo", "a", app("a"), []attach{on(shared, addrs(10, 2)...), on(local, addrs(11, 2)...)})
	b := w.pod("pfo", "b", app("b"), []attach{on(shared, addrs(10, 3)...), on(local, addrs(11, 3)...)})
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: deny-shared, namespace: pfo, annotations: {k8s.v1.cni.cncf.io/policy-for: pfo-net/net}}
spec: {podSelector: {}, policyTypes: [Ingress]}
`)
	m := w.expect(shared, pods(a, b), tcp80)
	w.want(m, a, b, tcp80, false)
	m = w.expect(local, pods(a, b), tcp80)
	w.want(m, a, b, tcp80, true)
}

// A pod on two networks: the one not in policy-for stays open.
func TestNetworkNotInPolicyForStaysOpen(t *testing.T) {
	w := newWorld(t)
	w.namespace("open", nil)
	netA := w.nad("open", "net-a", "cx6dx_p0")
	netB := w.nad("open", "net-b", "cx6dx_p1")
	a := w.pod("open", "a", app("a"), []attach{on(netA, addrs(12, 2)...), on(netB, addrs(13, 2)...)})
	b := w.pod("open", "b", app("b"), []attach{on(netA, addrs(12, 3)...), on(netB, addrs(13, 3)...)})
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: deny-a, namespace: open, annotations: {k8s.v1.cni.cncf.io/policy-for: net-a}}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
`)
	m := w.expect(netA, pods(a, b), tcp80, udp53)
	w.want(m, a, b, tcp80, false)
	m = w.expect(netB, pods(a, b), tcp80, udp53)
	w.want(m, a, b, tcp80, true)
	w.want(m, b, a, udp53, true)
}

// Two networks on the same resource: each VF (taken in multus's order)
// gets its own network's rules.
func TestTwoNetworksOnOneResource(t *testing.T) {
	w := newWorld(t)
	w.namespace("same", nil)
	netA := w.nad("same", "net-a", "cx6dx_p0")
	netB := w.nad("same", "net-b", "cx6dx_p0")
	a := w.pod("same", "a", app("a"), []attach{on(netA, addrs(14, 2)...), on(netB, addrs(15, 2)...)})
	b := w.pod("same", "b", app("b"), []attach{on(netA, addrs(14, 3)...), on(netB, addrs(15, 3)...)})
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: a-80-only, namespace: same, annotations: {k8s.v1.cni.cncf.io/policy-for: net-a}}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: TCP, port: 80}]}]
---
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: b-443-only, namespace: same, annotations: {k8s.v1.cni.cncf.io/policy-for: net-b}}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: TCP, port: 443}]}]
`)
	m := w.expect(netA, pods(a, b), tcp80, tcp443)
	w.want(m, a, b, tcp80, true)
	w.want(m, a, b, tcp443, false)
	m = w.expect(netB, pods(a, b), tcp80, tcp443)
	w.want(m, a, b, tcp80, false)
	w.want(m, a, b, tcp443, true)
}
