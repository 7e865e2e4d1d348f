//go:build kernel

package app

import (
	"context"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// TestKernelExplainInstalled runs `explain --dev` against filters the real
// driver installed on a representor: it agrees while they are the
// computed ones, reports each filter's in_hw, and exits 4 naming the
// disagreement when the installed filters drift or are gone.
func TestKernelExplainInstalled(t *testing.T) {
	datapath.RequireBed(t)
	ctx := context.Background()
	datapath.Run(t, "ip", "link", "add", "exp0", "type", "veth", "peer", "name", "exp0p")
	datapath.Run(t, "ip", "link", "set", "exp0", "up")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", "exp0").Run() })

	server := exampleServerRuleSet(t)
	drv, err := tcdriver.New(tcdriver.Options{}, logrus.StandardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = drv.Close() }()
	explain := func() (string, int) {
		out, errOut, code := runCLI(t, "explain", "-f", "../../../docs/examples", "--pod", "blue/server",
			"--from", "10.10.0.20", "--proto", "tcp", "--port", "8080", "--dev", "exp0")
		return out + errOut, code
	}

	if err := drv.Apply(ctx, "exp0", server); err != nil {
		t.Fatal(err)
	}
	out, code := explain()
	if code != 0 || !strings.Contains(out, "installed on exp0 (") || !strings.Contains(out, "[not_in_hw, 0 packets]") || strings.Contains(out, "DISAGREEMENT") {
		t.Errorf("installed = computed: exit %d:\n%s", code, out)
	}

	// Traffic: the host sends through exp0's egress hook (the pod's
	// ingress) one SYN that rule blue/allow-from-red ingress[0] allows
	// and one that no rule allows; the kernel's counters must show both.
	mac, err := os.ReadFile("/sys/class/net/exp0p/address")
	if err != nil {
		t.Fatal(err)
	}
	datapath.Run(t, "ip", "addr", "add", "10.10.0.20/24", "dev", "exp0")
	datapath.Run(t, "ip", "neigh", "add", "10.10.0.99", "lladdr", strings.TrimSpace(string(mac)), "dev", "exp0")
	for _, port := range []string{"8080", "5005"} {
		if c, err := net.DialTimeout("tcp", "10.10.0.99:"+port, 300*time.Millisecond); err == nil {
			_ = c.Close() // nothing listens behind exp0p; the SYN is what counts
		}
	}
	st, err := drv.Dump(ctx, "exp0")
	if err != nil {
		t.Fatal(err)
	}
	cnt, ok := tcdriver.CountersOf(st, tcdriver.HookFor(policy.Ingress), &server.Ingress, tcdriver.Options{})
	rule := slices.IndexFunc(server.Ingress.Rules, func(r policy.Rule) bool { return slices.Contains(r.Origins, "blue/allow-from-red ingress[0]") })
	if !ok || rule < 0 || cnt.Rules[rule] < 1 || cnt.Dropped < 1 {
		t.Errorf("counters %+v (active %v); want blue/allow-from-red ingress[0] (rule %d) and dropped at least 1", cnt, ok, rule)
	}
	out, code = explain()
	if code != 0 || !strings.Contains(out, "counters on exp0 since its filters were installed:") || strings.Contains(out, "0 new connections allowed") {
		t.Errorf("explain after traffic: exit %d:\n%s", code, out)
	}
	t.Logf("explain --dev after traffic:\n%s", out)

	denyAll := &policy.RuleSet{Ingress: policy.DirectionRules{Isolated: true, Stateful: true}}
	if err := drv.Apply(ctx, "exp0", denyAll); err != nil {
		t.Fatal(err)
	}
	out, code = explain()
	if code != exitDisagreement || !strings.Contains(out, "DISAGREEMENT: the installed filters drop, the computed ones pass") {
		t.Errorf("drifted filters: exit %d:\n%s", code, out)
	}

	if err := drv.Remove(ctx, "exp0"); err != nil {
		t.Fatal(err)
	}
	out, code = explain()
	if code != exitDisagreement || !strings.Contains(out, "DISAGREEMENT: no filter of ours is installed on exp0") {
		t.Errorf("no filters: exit %d:\n%s", code, out)
	}
}
