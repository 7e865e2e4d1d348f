package integration

import (
	"fmt"
	"net"
	"strconv"
	"testing"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

func mustf(t testing.TB, err error, format string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	mustf(t, err, "free port")
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

func itoa(n int) string { return strconv.Itoa(n) }

func ipBlockPeer(cidr string) mnpv1beta1.MultiNetworkPolicyPeer {
	return mnpv1beta1.MultiNetworkPolicyPeer{IPBlock: &mnpv1beta1.IPBlock{CIDR: cidr}}
}

func statsDelta(a, b tcdriver.Stats) tcdriver.Stats {
	return tcdriver.Stats{Adds: a.Adds - b.Adds, Replaces: a.Replaces - b.Replaces, Deletes: a.Deletes - b.Deletes, Flushes: a.Flushes - b.Flushes, Dumps: a.Dumps - b.Dumps}
}

// metricValue sums the samples of a metric family whose labels include
// the value (any label), from the agent's registry.
func metricValue(t testing.TB, c *cluster, name, labelValue string) float64 {
	t.Helper()
	families, err := c.registry.Gather()
	mustf(t, err, "gather metrics")
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			match := labelValue == ""
			for _, l := range m.GetLabel() {
				if l.GetValue() == labelValue {
					match = true
				}
			}
			if !match {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}
