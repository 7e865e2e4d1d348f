package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// TestBridgePlacement: local pods A, B and C on the bridge with the
// uplink, B isolated (TCP 8080 from A and from 192.0.2.0/24, beyond the
// uplink). A frame from A to B is decided on A's port, one from the rest
// of the network on the uplink; B leaving removes its section from every
// port; a pod whose VF MAC is unknown is closed with an Event.
func TestBridgePlacement(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	c.waitReady()
	const ns = "bridged"
	network := ns + "/net"
	c.createNamespace(ns, nil)
	c.createNAD(ns, "net", "accelerated-bridge")
	a := c.createPod(podSpec{ns: ns, name: "a", node: localNode, labels: map[string]string{"app": "a"}, network: network, ip: "10.70.0.10"})
	b := c.createPod(podSpec{ns: ns, name: "b", node: localNode, labels: map[string]string{"app": "b"}, network: network, ip: "10.70.0.11"})
	cc := c.createPod(podSpec{ns: ns, name: "c", node: localNode, labels: map[string]string{"app": "c"}, network: network, ip: "10.70.0.12"})
	p := ingressPolicy(ns, "b", network, map[string]string{"app": "b"}, map[string]string{"app": "a"}, intstr.FromInt32(8080))
	p.Spec.Ingress[0].From = append(p.Spec.Ingress[0].From, ipBlockPeer("192.0.2.0/24"))
	c.createPolicy(p)

	cases := []struct {
		what string
		got  func() tcdriver.Verdict
		want tcdriver.Verdict
	}{
		{"A → B:8080 on A's port", func() tcdriver.Verdict { return c.localVerdict(a, "10.70.0.10", b, "10.70.0.11", 8080) }, tcdriver.Pass},
		{"A → B:22 on A's port", func() tcdriver.Verdict { return c.localVerdict(a, "10.70.0.10", b, "10.70.0.11", 22) }, tcdriver.Drop},
		{"C → B:8080 on C's port", func() tcdriver.Verdict { return c.localVerdict(cc, "10.70.0.12", b, "10.70.0.11", 8080) }, tcdriver.Drop},
		{"outside allowed → B:8080 on the uplink", func() tcdriver.Verdict { return c.ingressVerdict(b, "192.0.2.7", "10.70.0.11", 8080) }, tcdriver.Pass},
		{"outside denied → B:8080 on the uplink", func() tcdriver.Verdict { return c.ingressVerdict(b, "198.51.100.7", "10.70.0.11", 8080) }, tcdriver.Drop},
		{"C → A:22 on C's port (A open)", func() tcdriver.Verdict { return c.localVerdict(cc, "10.70.0.12", a, "10.70.0.10", 22) }, tcdriver.Pass},
	}
	eventually(t, 20*time.Second, func() (bool, string) {
		var bad []string
		for _, k := range cases {
			if got := k.got(); got != k.want {
				bad = append(bad, fmt.Sprintf("%s: %s, want %s", k.what, got, k.want))
			}
		}
		return len(bad) == 0, strings.Join(bad, "; ")
	})
	if got, want := strings.Join(c.dispatchesTo(b), ","), strings.Join([]string{uplink, a, cc}, ","); got != want {
		t.Errorf("ports deciding B's ingress: %s, want %s", got, want)
	}
	for _, rep := range []string{a, b, cc} {
		if n := len(c.tc.Filters(rep, tcdriver.HookEgress)); n != 0 {
			t.Errorf("%s: %d filters on the egress hook, want none (nothing that decides sits there)", rep, n)
		}
	}

	t.Run("restart: every port adopted without a write", func(t *testing.T) {
		ops := c.tc.Stats()
		c.stopAgent()
		c.startAgent()
		c.waitReady()
		time.Sleep(300 * time.Millisecond) // let any stray work land before counting
		if d := statsDelta(c.tc.Stats(), ops); d.Adds+d.Deletes+d.Replaces+d.Flushes != 0 {
			t.Errorf("restart changed the kernel: %+v, want only dumps", d)
		}
		for _, k := range cases {
			if got := k.got(); got != k.want {
				t.Errorf("after restart: %s: %s, want %s", k.what, got, k.want)
			}
		}
	})

	t.Run("B leaves: its section goes from every port", func(t *testing.T) {
		c.deletePod(ns, "b")
		eventually(t, 10*time.Second, func() (bool, string) {
			ports := c.dispatchesTo(b)
			return len(ports) == 0, fmt.Sprintf("ports still dispatching to B: %v", ports)
		})
		// B's VF is closed alone, as a free VF is.
		if v := c.ingressVerdict(b, "192.0.2.7", "10.70.0.11", 8080); v != tcdriver.Drop {
			t.Errorf("B's released VF: %s, want drop", v)
		}
		// Nobody on the bridge isolates its ingress any more: no filters
		// are needed on the uplink and A and C pass freely.
		eventually(t, 10*time.Second, func() (bool, string) {
			n := c.ourFilters(uplink)
			return n == 0, fmt.Sprintf("%s keeps %d filters", uplink, n)
		})
	})

	t.Run("VF MAC unknown: Event on the pod, closed both ways", func(t *testing.T) {
		c.mu.Lock()
		vf := c.nextVF
		c.mu.Unlock()
		c.resolver.f.SetVFMAC(vfPCI(vf), nil)
		d := c.createPod(podSpec{ns: ns, name: "d", node: localNode, labels: map[string]string{"app": "b"}, network: network, ip: "10.70.0.13"})
		eventually(t, 15*time.Second, func() (bool, string) {
			evs := c.events(ns, "Pod", "d")
			for _, e := range evs {
				if e.Reason == "VFMACUnknown" && strings.Contains(e.Message, "network "+network) && strings.Contains(e.Message, vfPCI(vf)) {
					return true, ""
				}
			}
			return false, "no VFMACUnknown Event on bridged/d: " + eventsText(evs)
		})
		for _, v := range []tcdriver.Verdict{
			c.ingressVerdict(d, "192.0.2.7", "10.70.0.13", 8080),
			c.localVerdict(d, "10.70.0.13", a, "10.70.0.10", 22),
		} {
			if v != tcdriver.Drop {
				t.Errorf("d without MAC: %s, want drop both ways", v)
			}
		}
		if ports := c.dispatchesTo(d); len(ports) != 0 {
			t.Errorf("ports dispatching to d: %v, want none", ports)
		}
		// multus reports the MAC: d joins the bridge program.
		pod, err := c.admin.Kube.CoreV1().Pods(ns).Get(ctx(), "d", metav1.GetOptions{})
		mustf(t, err, "get d")
		js, _ := json.Marshal([]nadv1.NetworkStatus{{Name: network, Interface: "net1", IPs: []string{"10.70.0.13"}, Mac: vfMAC(vf).String()}})
		pod.Annotations[nadv1.NetworkStatusAnnot] = string(js)
		_, err = c.admin.Kube.CoreV1().Pods(ns).Update(ctx(), pod, metav1.UpdateOptions{})
		mustf(t, err, "network-status of d")
		eventually(t, 10*time.Second, func() (bool, string) {
			in := c.ingressVerdict(d, "192.0.2.7", "10.70.0.13", 8080)
			out := c.localVerdict(a, "10.70.0.10", d, "10.70.0.13", 8080)
			return in == tcdriver.Pass && out == tcdriver.Pass && len(c.dispatchesTo(d)) == 3,
				fmt.Sprintf("outside → d: %s, A → d: %s, dispatching: %v", in, out, c.dispatchesTo(d))
		})
	})
}
