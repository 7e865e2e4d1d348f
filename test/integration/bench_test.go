package integration

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// BenchmarkPolicyToProgrammed measures, end to end, the time from creating a
// MultiNetworkPolicy in the API server to the rule being enforced by what is
// programmed on the representor (traced through the TC Fake): watch
// delivery, engine update, workqueue, compute and driver apply. Each
// iteration adds one policy opening one more port to a pod among 16 local
// and 64 remote pods; p50/p99 are reported as custom metrics.
func BenchmarkPolicyToProgrammed(b *testing.B) {
	c := newCluster(b, clusterOptions{})
	c.waitReady()
	const ns = "bench"
	network := ns + "/net"
	c.createNamespace(ns, nil)
	c.createNAD(ns, "net", "accelerated-bridge")
	rep := c.createPod(podSpec{ns: ns, name: "server", node: localNode, labels: map[string]string{"app": "server"}, network: network, ip: "10.40.0.10"})
	for i := range numVFs - 1 {
		c.createPod(podSpec{ns: ns, name: fmt.Sprintf("local-%d", i), node: localNode, labels: map[string]string{"app": "other"}, network: network, ip: fmt.Sprintf("10.40.1.%d", i+1)})
	}
	for i := range 64 {
		c.createPod(podSpec{ns: ns, name: fmt.Sprintf("client-%d", i), node: remoteNode, labels: map[string]string{"app": "client"}, network: network, ip: fmt.Sprintf("10.40.2.%d", i+1)})
	}
	eventually(b, 30*time.Second, func() (bool, string) {
		n := 0
		for _, a := range c.agent.Attachments() {
			if a.State == "programmed" {
				n++
			}
		}
		return n == numVFs, fmt.Sprintf("%d of %d attachments programmed", n, numVFs)
	})

	// Isolate the server first, so that each new port is dropped until its
	// policy is programmed.
	c.createPolicy(ingressPolicy(ns, "baseline", network, map[string]string{"app": "server"}, map[string]string{"app": "client"}, intstr.FromInt32(1)))
	c.waitEnforced(b, rep, "10.40.2.1", "10.40.9.9", "10.40.0.10", 1)
	if c.ingressVerdict(rep, "10.40.2.1", "10.40.0.10", 2000) != tcdriver.Drop {
		b.Fatal("server not isolated")
	}

	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		port := uint16(2000 + i%60000)
		start := time.Now()
		c.createPolicy(ingressPolicy(ns, fmt.Sprintf("p-%d", i), network, map[string]string{"app": "server"}, map[string]string{"app": "client"}, intstr.FromInt32(int32(port))))
		for c.ingressVerdict(rep, "10.40.2.1", "10.40.0.10", port) != tcdriver.Pass {
			if time.Since(start) > 30*time.Second {
				b.Fatalf("policy p-%d not programmed after 30s", i)
			}
			time.Sleep(500 * time.Microsecond)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(float64(len(lat))*p))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}
