package sandbox

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy/manifest"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// One local pod isolated both ways, a local peer and two remote pods: the
// expectation of a cell with a remote end comes from the local pod's rules
// only.
const remoteWorld = `
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: net, namespace: x, annotations: {k8s.v1.cni.cncf.io/resourceName: mellanox.com/cx6dx_p0}}
spec: {config: '{"cniVersion": "0.4.0", "name": "net", "type": "accelerated-bridge", "bridge": "br0"}'}
---
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: x
  labels: {app: a}
  annotations:
    k8s.v1.cni.cncf.io/networks: '[{"name": "net", "interface": "net1", "ips": ["10.0.0.2/24"]}]'
    k8s.v1.cni.cncf.io/network-status: '[{"name": "x/net", "interface": "net1", "ips": ["10.0.0.2"]}]'
spec: {containers: [{name: c, image: i}]}
status: {phase: Running}
---
apiVersion: v1
kind: Pod
metadata:
  name: b
  namespace: x
  labels: {app: b}
  annotations:
    k8s.v1.cni.cncf.io/networks: '[{"name": "net", "interface": "net1", "ips": ["10.0.0.3/24"]}]'
    k8s.v1.cni.cncf.io/network-status: '[{"name": "x/net", "interface": "net1", "ips": ["10.0.0.3"]}]'
spec: {containers: [{name: c, image: i}]}
status: {phase: Running}
---
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: a, namespace: x, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.100/32}}]}]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.101/32}}], ports: [{protocol: TCP, port: 80}]}]
`

func TestExpectedWithRemotePods(t *testing.T) {
	objs := &policy.Objects{}
	if err := manifest.Decode(objs, "remoteWorld", strings.NewReader(remoteWorld)); err != nil {
		t.Fatal(err)
	}
	net := policy.NetworkRef{Namespace: "x", Name: "net"}
	local := func(name, ip string) *Pod {
		return &Pod{Namespace: "x", Name: name, Attachments: []*PodAttachment{{Network: net, Interface: "net1", IPs: []netip.Addr{netip.MustParseAddr(ip)}}}}
	}
	remote := func(name, ip string) *Pod {
		return &Pod{Namespace: RemoteNamespace, Name: name, Remote: true, Attachments: []*PodAttachment{{Network: net, Interface: "eth0", IPs: []netip.Addr{netip.MustParseAddr(ip)}}}}
	}
	a, b := local("a", "10.0.0.2"), local("b", "10.0.0.3")
	friend, api, stranger := remote("friend", "10.0.0.100"), remote("api", "10.0.0.101"), remote("stranger", "10.0.0.102")
	tcp80, udp53 := Probe{Proto: datapath.TCP, Port: 80}, Probe{Proto: datapath.UDP, Port: 53}
	tcp80v6 := Probe{Proto: datapath.TCP, Port: 80, IPv6: true}
	for _, tc := range []struct {
		name     string
		from, to *Pod
		probe    Probe
		want     bool
		dir      string
	}{
		{"allowed ipBlock in", friend, a, tcp80, true, RemoteToLocal},
		{"other outside address in", stranger, a, tcp80, false, RemoteToLocal},
		{"egress peer is not an ingress peer", api, a, tcp80, false, RemoteToLocal},
		{"into a pod without policy", stranger, b, udp53, true, RemoteToLocal},
		{"allowed ipBlock and port out", a, api, tcp80, true, LocalToRemote},
		{"allowed ipBlock, other port out", a, api, udp53, false, LocalToRemote},
		{"other outside address out", a, friend, tcp80, false, LocalToRemote},
		{"out of a pod without policy", b, stranger, tcp80, true, LocalToRemote},
		{"no address of the family", friend, a, tcp80v6, false, RemoteToLocal},
		{"pod to pod: receiver's ingress", b, a, tcp80, false, PodToPod},
		{"pod to pod: sender's egress", a, b, tcp80, false, PodToPod},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Expected(objs, policy.Options{}, net, tc.from, tc.to, tc.probe); got != tc.want {
				t.Errorf("Expected(%s -> %s %s) = %v, want %v", tc.from.Key(), tc.to.Key(), tc.probe, got, tc.want)
			}
			c := Cell{From: tc.from, To: tc.to}
			if d := c.Direction(); d != tc.dir {
				t.Errorf("direction %s, want %s", d, tc.dir)
			}
		})
	}
}

// A denied connection agrees with the evaluator only when its request
// never reached the destination: a lost reply is not a drop.
func TestCellAgrees(t *testing.T) {
	for _, tc := range []struct {
		name                     string
		want, delivered, reached bool
		agrees                   bool
	}{
		{"allowed, delivered", true, true, true, true},
		{"allowed, dropped", true, false, false, false},
		{"allowed, reply lost", true, false, true, false},
		{"denied, dropped", false, false, false, true},
		{"denied, reply lost", false, false, true, false},
		{"denied, delivered", false, true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Cell{Want: tc.want, Got: tc.delivered, Result: datapath.Result{Delivered: tc.delivered, Reached: tc.reached}}
			if got := c.Agrees(); got != tc.agrees {
				t.Errorf("Agrees() = %v, want %v", got, tc.agrees)
			}
		})
	}
}
