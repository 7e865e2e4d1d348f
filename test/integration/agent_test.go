// Package integration runs the agent in-process against a real
// kube-apiserver and etcd (built by hack/kube), with deploy/'s CRD and RBAC
// installed, a real PodResources gRPC server on a unix socket, the sriov
// Fake and the TC driver's Fake. `make test-integration` runs it.
package integration

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

func podResourcesClient(t testing.TB, socket string) *podresources.Client {
	t.Helper()
	c, err := podresources.New(socket, podresources.Options{CallTimeout: 5 * time.Second})
	mustf(t, err, "podresources client")
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestAgent drives one agent through the life of a small cluster. The
// subtests share the API server and run in order.
func TestAgent(t *testing.T) {
	rulesDir := t.TempDir()
	c := newCluster(t, clusterOptions{podRulesPath: rulesDir})
	c.waitReady()

	const ns = "shop"
	network := ns + "/sriov-net"
	c.createNamespace(ns, map[string]string{"team": "shop"})
	c.createNAD(ns, "sriov-net", "accelerated-bridge")
	db := c.createPod(podSpec{ns: ns, name: "db", node: localNode, labels: map[string]string{"app": "db"}, network: network, ip: "10.10.0.10", port: 5432})
	cache := c.createPod(podSpec{ns: ns, name: "cache", node: localNode, labels: map[string]string{"app": "cache"}, network: network, ip: "10.10.0.11"})
	c.createPod(podSpec{ns: ns, name: "api", node: remoteNode, labels: map[string]string{"app": "api"}, network: network, ip: "10.10.0.20"})
	c.createPod(podSpec{ns: ns, name: "batch", node: remoteNode, labels: map[string]string{"app": "batch"}, network: network, ip: "10.10.0.21"})

	t.Run("attachments mapped from PodResources, unpoliced until a policy selects them", func(t *testing.T) {
		eventually(t, 30*time.Second, func() (bool, string) {
			atts := c.agent.Attachments()
			var b strings.Builder
			programmed := 0
			for _, a := range atts {
				b.WriteString(a.ID + "=" + a.State + "@" + strings.Join(a.Representors, ",") + " ")
				if a.State == "programmed" {
					programmed++
				}
			}
			return programmed == 2, "attachments: " + b.String()
		})
		if n := c.ourFilters(db); n != 0 {
			t.Errorf("%s: %d filters before any policy, want 0 (no policy: no isolation, no per-packet cost)", db, n)
		}
	})

	t.Run("policy converges to programmed rules", func(t *testing.T) {
		c.createPolicy(ingressPolicy(ns, "db-from-api", network, map[string]string{"app": "db"}, map[string]string{"app": "api"}, intstr.FromString("http")))
		c.waitEnforced(t, db, "10.10.0.20", "10.10.0.21", "10.10.0.10", 5432)
		for _, probe := range []struct {
			src  string
			port uint16
		}{{"10.10.0.21", 5432}, {"10.10.0.20", 80}, {"192.0.2.1", 5432}} {
			if v := c.ingressVerdict(db, probe.src, "10.10.0.10", probe.port); v != tcdriver.Drop {
				t.Errorf("%s → db:%d: %s, want drop", probe.src, probe.port, v)
			}
		}
		// cache is not selected: nothing dispatches to it, but its port
		// decides db's ingress for what cache sends.
		if ports := c.dispatchesTo(cache); len(ports) != 0 {
			t.Errorf("cache is not selected but %v dispatch to it", ports)
		}
		// waitEnforced saw db's section on the uplink, which a bridge
		// apply programs first; the pods' ports follow.
		eventually(t, 10*time.Second, func() (bool, string) {
			v := c.localVerdict(cache, "10.10.0.11", db, "10.10.0.10", 5432)
			return v == tcdriver.Drop, fmt.Sprintf("cache → db:5432 on cache's port: %s, want drop (cache is no api)", v)
		})
		// --pod-rules-path shows what was programmed.
		eventually(t, 10*time.Second, func() (bool, string) {
			b, err := os.ReadFile(filepath.Join(c.opts.PodRulesPath, "shop_db_shop_sriov-net.rules"))
			return err == nil && strings.Contains(string(b), "shop/db-from-api") && strings.Contains(string(b), "dev "+db),
				fmt.Sprintf("pod rules file lacks the policy or the tc commands for %s (%v):\n%s", db, err, b)
		})
	})

	t.Run("peer change follows: new pod IP allowed, old one not", func(t *testing.T) {
		pod, err := c.admin.Kube.CoreV1().Pods(ns).Get(ctx(), "batch", metav1.GetOptions{})
		mustf(t, err, "get batch")
		pod.Labels["app"] = "api"
		_, err = c.admin.Kube.CoreV1().Pods(ns).Update(ctx(), pod, metav1.UpdateOptions{})
		mustf(t, err, "relabel batch")
		eventually(t, 10*time.Second, c.expectIngress(db, "10.10.0.21", "10.10.0.10", 5432, tcdriver.Pass))
		pod.Labels["app"] = "batch"
		pod, err = c.admin.Kube.CoreV1().Pods(ns).Get(ctx(), "batch", metav1.GetOptions{})
		mustf(t, err, "get batch")
		pod.Labels["app"] = "batch"
		_, err = c.admin.Kube.CoreV1().Pods(ns).Update(ctx(), pod, metav1.UpdateOptions{})
		mustf(t, err, "relabel batch back")
		eventually(t, 10*time.Second, c.expectIngress(db, "10.10.0.21", "10.10.0.10", 5432, tcdriver.Drop))
	})

	t.Run("a policy change touches only the attachments it affects", func(t *testing.T) {
		// The bridge placement puts cache's ingress on every other port of
		// its bridge, so its one attachment re-applies the bridge once;
		// nothing is programmed alone.
		before, _ := c.driver.counts()
		bridgeBefore := c.driver.bridgeCount(bridge)
		opsBefore := c.tc.Stats()
		c.createPolicy(ingressPolicy(ns, "cache-from-api", network, map[string]string{"app": "cache"}, map[string]string{"app": "api"}, intstr.FromInt32(6379)))
		c.waitEnforced(t, cache, "10.10.0.20", "10.10.0.21", "10.10.0.11", 6379)
		time.Sleep(300 * time.Millisecond) // let any stray work land before counting
		after, _ := c.driver.counts()
		if d := after[db] - before[db] + after[cache] - before[cache]; d != 0 {
			t.Errorf("%d Apply calls on db's or cache's representor, want none (both are bridge ports)", d)
		}
		if d := c.driver.bridgeCount(bridge) - bridgeBefore; d != 1 {
			t.Errorf("bridge %s applied %d times for one changed attachment, want 1", bridge, d)
		}
		if got, want := strings.Join(c.dispatchesTo(cache), ","), uplink+","+db; got != want {
			t.Errorf("ports deciding cache's ingress: %s, want %s", got, want)
		}
		t.Logf("kernel operations for one new policy on one attachment: %+v", statsDelta(c.tc.Stats(), opsBefore))
	})

	t.Run("TC programming failure: Event on the pod, previous rules kept, retried", func(t *testing.T) {
		c.tc.FailAfter(0) // the kernel refuses the next write (EBUSY)
		c.createPolicy(ingressPolicy(ns, "cache-from-batch", network, map[string]string{"app": "cache"}, map[string]string{"app": "batch"}, intstr.FromInt32(6379)))
		eventually(t, 10*time.Second, func() (bool, string) {
			evs := c.events(ns, "Pod", "cache")
			for _, e := range evs {
				if e.Reason == "TCProgrammingFailed" && strings.Contains(e.Message, cache) {
					return true, ""
				}
			}
			return false, "no TCProgrammingFailed Event on shop/cache: " + eventsText(evs)
		})
		// the retry lands the new rule; the old one held throughout
		c.waitEnforced(t, cache, "10.10.0.21", "192.0.2.1", "10.10.0.11", 6379)
		if v := c.ingressVerdict(cache, "10.10.0.20", "10.10.0.11", 6379); v != tcdriver.Pass {
			t.Errorf("cache-from-api's peer: %s, want pass", v)
		}
		c.deletePolicy(ns, "cache-from-batch")
	})

	t.Run("invalid policy: Event on the policy, selected pod stays isolated", func(t *testing.T) {
		bad := ingressPolicy(ns, "bad-cidr", network, map[string]string{"app": "cache"}, nil, intstr.FromInt32(11211))
		bad.Spec.Ingress[0].From = nil
		bad.Spec.Ingress[0].From = append(bad.Spec.Ingress[0].From, ipBlockPeer("10.10.0.0/33"))
		c.createPolicy(bad)
		eventually(t, 10*time.Second, func() (bool, string) {
			evs := c.events(ns, "MultiNetworkPolicy", "bad-cidr")
			for _, e := range evs {
				if e.Type == corev1.EventTypeWarning && e.Reason == "InvalidInput" && strings.Contains(e.Message, "10.10.0.0/33") {
					return true, ""
				}
			}
			return false, "no InvalidInput Event naming the CIDR on shop/bad-cidr: " + eventsText(evs)
		})
		// fail closed: the broken peer allows nothing, the good policy still applies
		if v := c.ingressVerdict(cache, "10.10.0.30", "10.10.0.11", 11211); v != tcdriver.Drop {
			t.Errorf("traffic the invalid peer would name: %s, want drop", v)
		}
		if v := c.ingressVerdict(cache, "10.10.0.20", "10.10.0.11", 6379); v != tcdriver.Pass {
			t.Errorf("traffic of the valid policy: %s, want pass", v)
		}
		if got := metricValue(t, c, "multi_networkpolicy_tc_errors_total", "InvalidInput"); got < 1 {
			t.Errorf("errors_total{reason=InvalidInput} = %v, want ≥ 1", got)
		}
		c.deletePolicy(ns, "bad-cidr")
	})

	t.Run("representor missing: Event on the pod, retried until it appears", func(t *testing.T) {
		// VF 7 has no representor netdev (driver reload, wrong mode).
		c.resolver.removeRepresentor(vfPCI(7))
		c.mu.Lock()
		c.nextVF = 7
		c.mu.Unlock()
		c.createPod(podSpec{ns: ns, name: "orphan", node: localNode, labels: map[string]string{"app": "db"}, network: network, ip: "10.10.0.12", port: 5432})
		eventually(t, 15*time.Second, func() (bool, string) {
			evs := c.events(ns, "Pod", "orphan")
			// The Event is sent before the gauge is updated: wait for both.
			for _, e := range evs {
				if e.Reason == "RepresentorNotFound" && strings.Contains(e.Message, vfPCI(7)) {
					if n := metricValue(t, c, "multi_networkpolicy_tc_attachments", "failed"); n != 1 {
						return false, fmt.Sprintf("attachments{state=failed} = %v, want 1", n)
					}
					return true, ""
				}
			}
			return false, "no RepresentorNotFound Event on shop/orphan: " + eventsText(evs)
		})
		// The representor comes back: the retry programs it (orphan is
		// app=db, so db-from-api isolates it).
		c.resolver.addVF(7)
		c.waitEnforced(t, repName(7), "10.10.0.20", "10.10.0.21", "10.10.0.12", 5432)
	})

	t.Run("device count mismatch: Event on the pod, no rules guessed", func(t *testing.T) {
		c.createPod(podSpec{ns: ns, name: "no-vf", node: localNode, labels: map[string]string{"app": "db"}, network: network, ip: "10.10.0.13", noDevices: true})
		eventually(t, 15*time.Second, func() (bool, string) {
			evs := c.events(ns, "Pod", "no-vf")
			for _, e := range evs {
				if e.Reason == "DeviceCountMismatch" && strings.Contains(e.Message, resource) {
					return true, ""
				}
			}
			return false, "no DeviceCountMismatch Event on shop/no-vf: " + eventsText(evs)
		})
		for _, a := range c.agent.Attachments() {
			if strings.HasPrefix(a.ID, ns+"/no-vf/") {
				t.Errorf("attachment %s exists for a pod whose VF is unknown", a.ID)
			}
		}
	})

	t.Run("pod deleted: its representor is closed, as a free VF's is", func(t *testing.T) {
		c.deletePod(ns, "db")
		// The representor is closed first, then the pod's rules file goes.
		eventually(t, 10*time.Second, func() (bool, string) {
			if v := c.ingressVerdict(db, "10.10.0.20", "10.10.0.10", 5432); v != tcdriver.Drop {
				return false, db + ": db-from-api's peer: " + v.String() + ", want drop (closed)"
			}
			if _, err := os.Stat(filepath.Join(c.opts.PodRulesPath, "shop_db_shop_sriov-net.rules")); !os.IsNotExist(err) {
				return false, fmt.Sprintf("pod rules file of the deleted pod still there: %v", err)
			}
			return true, ""
		})
	})

	t.Run("policy deleted: isolation lifted", func(t *testing.T) {
		c.deletePolicy(ns, "cache-from-api")
		eventually(t, 10*time.Second, func() (bool, string) {
			ports := c.dispatchesTo(cache)
			v := c.ingressVerdict(cache, "192.0.2.1", "10.10.0.11", 80)
			return len(ports) == 0 && v == tcdriver.Pass, fmt.Sprintf("ports still deciding cache's ingress: %v; 192.0.2.1 → cache:80: %s", ports, v)
		})
	})

	t.Run("metrics and probes are served", func(t *testing.T) {
		for url, want := range map[string]string{
			"http://" + c.opts.MetricsBindAddress + "/metrics":     "multi_networkpolicy_tc_sync_duration_seconds",
			"http://" + c.opts.HealthProbeBindAddress + "/healthz": "ok",
			"http://" + c.opts.HealthProbeBindAddress + "/readyz":  "ok",
		} {
			body := httpGet(t, url)
			if !strings.Contains(body, want) {
				t.Errorf("%s: want %q in:\n%.2000s", url, want, body)
			}
		}
		body := httpGet(t, "http://"+c.opts.MetricsBindAddress+"/metrics")
		for _, m := range []string{"multi_networkpolicy_tc_attachments{state=\"programmed\"}", "multi_networkpolicy_tc_podresources_call_duration_seconds", "multi_networkpolicy_tc_errors_total"} {
			if !strings.Contains(body, m) {
				t.Errorf("/metrics lacks %s", m)
			}
		}
	})
}

// TestDriftRepaired shows the resync restoring filters deleted behind the
// agent's back.
func TestDriftRepaired(t *testing.T) {
	c := newCluster(t, clusterOptions{resync: 2 * time.Second})
	c.waitReady()
	const ns = "drift"
	network := ns + "/net"
	c.createNamespace(ns, nil)
	c.createNAD(ns, "net", "accelerated-bridge")
	rep := c.createPod(podSpec{ns: ns, name: "server", node: localNode, labels: map[string]string{"app": "server"}, network: network, ip: "10.20.0.10"})
	c.createPod(podSpec{ns: ns, name: "client", node: remoteNode, labels: map[string]string{"app": "client"}, network: network, ip: "10.20.0.20"})
	c.createPolicy(ingressPolicy(ns, "allow-client", network, map[string]string{"app": "server"}, map[string]string{"app": "client"}, intstr.FromInt32(443)))
	c.waitEnforced(t, rep, "10.20.0.20", "10.20.0.99", "10.20.0.10", 443)
	want := c.ourFilters(rep)
	stBefore, _ := c.tc.Dump(ctx(), rep)

	// Someone flushes our filters by hand.
	mustf(t, c.tc.Remove(ctx(), rep), "remove by hand")
	if n := c.ourFilters(rep); n != 0 {
		t.Fatalf("hand removal left %d filters", n)
	}
	eventually(t, 15*time.Second, func() (bool, string) {
		n := c.ourFilters(rep)
		return n == want, "filters on " + rep + ": " + itoa(n) + ", want " + itoa(want)
	})
	if v := c.ingressVerdict(rep, "10.20.0.99", "10.20.0.10", 443); v != tcdriver.Drop {
		stAfter, _ := c.tc.Dump(ctx(), rep)
		t.Errorf("after repair, an unlisted peer: %s, want drop\nbefore:\n%s\nafter:\n%s", v, stBefore.Canonical(), stAfter.Canonical())
	}
}

// TestRestartAdoptsRules restarts the agent over programmed representors:
// the rules keep enforcing throughout, and the new agent adopts them
// without a single filter added or deleted.
func TestRestartAdoptsRules(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	c.waitReady()
	const ns = "restart"
	network := ns + "/net"
	c.createNamespace(ns, nil)
	c.createNAD(ns, "net", "accelerated-bridge")
	rep := c.createPod(podSpec{ns: ns, name: "server", node: localNode, labels: map[string]string{"app": "server"}, network: network, ip: "10.50.0.10"})
	c.createPod(podSpec{ns: ns, name: "client", node: remoteNode, labels: map[string]string{"app": "client"}, network: network, ip: "10.50.0.20"})
	c.createPolicy(ingressPolicy(ns, "allow-client", network, map[string]string{"app": "server"}, map[string]string{"app": "client"}, intstr.FromInt32(443)))
	c.waitEnforced(t, rep, "10.50.0.20", "10.50.0.99", "10.50.0.10", 443)
	before, _ := c.tc.Dump(ctx(), rep)

	c.stopAgent()
	if v := c.ingressVerdict(rep, "10.50.0.99", "10.50.0.10", 443); v != tcdriver.Drop {
		t.Errorf("agent stopped: an unlisted peer: %s, want drop (rules must outlive the agent)", v)
	}
	ops := c.tc.Stats()
	c.startAgent()
	c.waitReady()
	d := statsDelta(c.tc.Stats(), ops)
	if d.Adds+d.Deletes+d.Replaces+d.Flushes != 0 {
		t.Errorf("restart changed the kernel: %+v, want only dumps", d)
	}
	after, _ := c.tc.Dump(ctx(), rep)
	if before.Canonical() != after.Canonical() {
		t.Errorf("state changed across restart:\nbefore:\n%s\nafter:\n%s", before.Canonical(), after.Canonical())
	}
	// and the new agent enforces changes
	c.createPod(podSpec{ns: ns, name: "client2", node: remoteNode, labels: map[string]string{"app": "client"}, network: network, ip: "10.50.0.21"})
	c.waitEnforced(t, rep, "10.50.0.21", "10.50.0.99", "10.50.0.10", 443)
}

// TestAPIServerOutage stops the API server mid-test: the agent keeps what it
// programmed, and converges on changes made once the server is back.
func TestAPIServerOutage(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	c.waitReady()
	const ns = "outage"
	network := ns + "/net"
	c.createNamespace(ns, nil)
	c.createNAD(ns, "net", "accelerated-bridge")
	rep := c.createPod(podSpec{ns: ns, name: "server", node: localNode, labels: map[string]string{"app": "server"}, network: network, ip: "10.30.0.10"})
	c.createPod(podSpec{ns: ns, name: "client", node: remoteNode, labels: map[string]string{"app": "client"}, network: network, ip: "10.30.0.20"})
	c.createPolicy(ingressPolicy(ns, "allow-client", network, map[string]string{"app": "server"}, map[string]string{"app": "client"}, intstr.FromInt32(443)))
	c.waitEnforced(t, rep, "10.30.0.20", "10.30.0.99", "10.30.0.10", 443)
	filters := c.ourFilters(rep)
	_, removesBefore := c.driver.counts()

	c.env.StopAPIServer()
	// The agent keeps running and enforcing: nothing is removed, the
	// policy's decisions stand.
	time.Sleep(3 * time.Second)
	select {
	case err := <-c.done:
		t.Fatalf("agent stopped during the outage: %v", err)
	default:
	}
	if n := c.ourFilters(rep); n != filters {
		t.Errorf("during the outage %s has %d filters, had %d", rep, n, filters)
	}
	if v := c.ingressVerdict(rep, "10.30.0.99", "10.30.0.10", 443); v != tcdriver.Drop {
		t.Errorf("during the outage an unlisted peer: %s, want drop", v)
	}
	if _, removes := c.driver.counts(); removes[rep] != removesBefore[rep] {
		t.Errorf("rules removed from %s during the outage", rep)
	}

	mustf(t, c.env.StartAPIServer(ctx()), "restarting kube-apiserver")
	// A change made after the outage reaches the kernel.
	c.createPod(podSpec{ns: ns, name: "client2", node: remoteNode, labels: map[string]string{"app": "client"}, network: network, ip: "10.30.0.21"})
	eventually(t, 60*time.Second, c.expectIngress(rep, "10.30.0.21", "10.30.0.10", 443, tcdriver.Pass))
	if v := c.ingressVerdict(rep, "10.30.0.20", "10.30.0.10", 443); v != tcdriver.Pass {
		t.Errorf("after the outage the first client: %s, want pass", v)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url) //nolint:gosec,noctx // test URL on 127.0.0.1
	mustf(t, err, "GET %s", url)
	defer func() { _ = resp.Body.Close() }()
	var b strings.Builder
	buf := make([]byte, 32*1024)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s: %s: %s", url, resp.Status, b.String())
	}
	return b.String()
}
