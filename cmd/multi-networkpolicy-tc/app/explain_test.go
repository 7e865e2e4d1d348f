package app

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"

	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov/sriovtest"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// TestExplainExamples explains connections of the docs/examples scenarios:
// allowed with the rule that allows it, denied with the policies that
// isolate, not isolated, egress, ICMP by --accept-icmp, and the path of
// the first packet through the computed filters. Every case must agree
// with the reference evaluator (exit 0).
func TestExplainExamples(t *testing.T) {
	cases := [][]string{
		{"--pod", "blue/server", "--from", "10.10.0.20", "--proto", "tcp", "--port", "8080"},
		{"--pod", "blue/server", "--from", "10.10.0.21", "--proto", "tcp", "--port", "5005"},
		{"--pod", "blue/server", "--from", "fd10::11", "--proto", "sctp", "--port", "7777"},
		{"--pod", "blue/server", "--to", "10.10.0.20", "--proto", "udp", "--port", "53"},
		{"--pod", "blue/client", "--from", "10.10.0.10", "--proto", "icmp", "--accept-icmp"},
	}
	var all strings.Builder
	for _, args := range cases {
		out, errOut, code := runCLI(t, append([]string{"explain", "-f", "../../../docs/examples", "--offload-profile", "mlx5-6.1"}, args...)...)
		if code != 0 {
			t.Errorf("%v: exit %d: %s", args, code, errOut)
		}
		if strings.Contains(out, "DISAGREEMENT") {
			t.Errorf("%v: %s", args, out)
		}
		all.WriteString("$ explain " + strings.Join(args, " ") + "\n" + out)
	}
	golden(t, "explain.text", all.String())
}

func TestExplainBadInput(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--pod", "blue/server", "--port", "80"}, "give exactly one of --from (to the pod) and --to (from the pod)"},
		{[]string{"--pod", "blue/server", "--from", "10.0.0.1", "--to", "10.0.0.2", "--port", "80"}, "give exactly one of"},
		{[]string{"--pod", "blue/server", "--from", "10.0.0.300", "--port", "80"}, `--from "10.0.0.300": not an IP address`},
		{[]string{"--pod", "blue/server", "--from", "10.0.0.1", "--proto", "gre"}, `--proto "gre": want tcp, udp, sctp, icmp or icmpv6`},
		{[]string{"--pod", "blue/server", "--from", "10.0.0.1"}, "--port 0: tcp needs a port 1-65535"},
		{[]string{"--pod", "blue/server", "--from", "10.0.0.1", "--proto", "icmp", "--port", "8"}, "--port 8: icmp has no ports"},
		{[]string{"--pod", "blue/server", "--from", "fd10::1", "--proto", "icmp"}, "--proto icmp with the address fd10::1 of the other family"},
		{[]string{"--pod", "server", "--from", "10.0.0.1", "--port", "80"}, `--pod "server": want namespace/name`},
		{[]string{"--pod", "blue/nobody", "--from", "10.0.0.1", "--port", "80"}, "--pod blue/nobody: no such pod with a secondary network"},
		{[]string{"--pod", "blue/server", "--network", "blue/other", "--from", "10.0.0.1", "--port", "80"}, "--pod blue/server: no such pod with a secondary network blue/other"},
	} {
		_, errOut, code := runCLI(t, append([]string{"explain", "-f", "../../../docs/examples"}, tt.args...)...)
		if code != exitBadInput || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tt.args, code, errOut, exitBadInput, tt.want)
		}
	}
}

// TestExplainOnNode: with --on-node, explain finds the pod's representor
// through PodResources and sysfs as the agent does, traces the filters
// installed there, and reports a pod that is not on this node.
func TestExplainOnNode(t *testing.T) {
	ctx := context.Background()
	server := exampleServerRuleSet(t)
	nic := sriovtest.ConnectX6Dx()
	const rep = "ens1f0npf0vf0" // the representor of VF 0000:3b:00.2
	drv := tcdriver.NewFake(tcdriver.Options{}, rep)
	if err := drv.Apply(ctx, rep, server); err != nil {
		t.Fatal(err)
	}
	node := &explainNode{
		podResources: func(context.Context) ([]*podresourcesv1.PodResources, error) {
			return []*podresourcesv1.PodResources{{Namespace: "blue", Name: "server", Containers: []*podresourcesv1.ContainerResources{
				debugContainer("server", "mellanox.com/cx6dx_p0", "0000:3b:00.2")}}}, nil
		},
		resolver: nic.Fake(),
		driver:   drv,
	}
	explain := func(pod string) (string, error) {
		o := &explainOptions{files: []string{"../../../docs/examples"}, pod: pod, from: "10.10.0.20", proto: "tcp", port: 8080,
			onNode: true, agentRuleFlags: agentRuleFlags{networkPlugins: policy.DefaultNetworkPlugins}}
		var out strings.Builder
		err := runExplain(ctx, o, node, nil, &out)
		return out.String(), err
	}
	out, err := explain("blue/server")
	if err != nil || !strings.Contains(out, "installed on "+rep+" (") || strings.Contains(out, "DISAGREEMENT") {
		t.Errorf("blue/server: %v\n%s", err, out)
	}
	// Two VFs for one network: the mapping's own error, naming the pod.
	entries := node.podResources
	node.podResources = func(context.Context) ([]*podresourcesv1.PodResources, error) {
		return []*podresourcesv1.PodResources{{Namespace: "blue", Name: "server", Containers: []*podresourcesv1.ContainerResources{
			debugContainer("server", "mellanox.com/cx6dx_p0", "0000:3b:00.2", "0000:3b:00.3")}}}, nil
	}
	if _, err := explain("blue/server"); err == nil || !strings.Contains(err.Error(), ": pod blue/server: resource mellanox.com/cx6dx_p0: device count does not match networks") {
		t.Errorf("blue/server with two VFs: %v", err)
	}
	node.podResources = entries
	out, err = explain("blue/client")
	if err == nil || !strings.Contains(err.Error(), "blue/client net1 (network blue/sriov-a): not in this node's PodResources") || strings.Contains(out, "installed on") {
		t.Errorf("blue/client (not on this node): %v\n%s", err, out)
	}
}

// exampleServerRuleSet is the rule set docs/examples give blue/server.
func exampleServerRuleSet(t *testing.T) *policy.RuleSet {
	t.Helper()
	objs, err := readManifests([]string{"../../../docs/examples"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	engine := policy.NewEngine(policy.Options{})
	atts, _ := loadEngine(engine, objs)
	engine.SetAttachments(atts)
	for _, a := range atts {
		if a.PodNamespace == "blue" && a.PodName == "server" {
			rs, err := engine.Compute(a)
			if rs == nil {
				t.Fatalf("blue/server: no rule set: %v", err)
			}
			return rs
		}
	}
	t.Fatal("no blue/server attachment in docs/examples")
	return nil
}

// TestExplainOnNodeBridged: with the pod's representor on a bridge,
// explain --on-node traces a connection to the pod through the filters
// installed on the bridge's uplink, dispatched on the VF's MAC as its PF
// reports it, and one from the pod through its representor.
func TestExplainOnNodeBridged(t *testing.T) {
	ctx := context.Background()
	server := exampleServerRuleSet(t)
	nic := sriovtest.ConnectX6Dx()
	const rep, uplink = "ens1f0npf0vf0", "ens1f0np0"
	sw := nic.Fake()
	sw.SetMaster(rep, "br0").SetMaster(uplink, "br0")
	mac := net.HardwareAddr{0x02, 0, 0x0a, 0x0a, 0, 0x10}
	sw.SetVFMAC("0000:3b:00.2", mac)
	drv := tcdriver.NewFake(tcdriver.Options{}, rep, uplink)
	if err := drv.ApplyBridge(ctx, &tcdriver.Bridge{Name: "br0", Uplinks: []string{uplink}, Ports: []tcdriver.BridgePort{{Dev: rep, MAC: mac, RuleSet: server}}}); err != nil {
		t.Fatal(err)
	}
	node := &explainNode{
		podResources: func(context.Context) ([]*podresourcesv1.PodResources, error) {
			return []*podresourcesv1.PodResources{{Namespace: "blue", Name: "server", Containers: []*podresourcesv1.ContainerResources{
				debugContainer("server", "mellanox.com/cx6dx_p0", "0000:3b:00.2")}}}, nil
		},
		resolver: sw,
		topology: sw,
		driver:   drv,
	}
	for _, c := range []struct {
		from, to string
		port     int
		want     []string
	}{
		{"10.10.0.20", "", 8080, []string{"installed on " + uplink + " (", ": pass", "dst_mac 02:00:0a:0a:00:10"}},
		{"10.10.0.21", "", 5005, []string{"installed on " + uplink + " (", ": drop"}},
		{"", "10.10.0.20", 53, []string{"installed on " + rep + " (", "verdict: allowed"}},
	} {
		o := &explainOptions{files: []string{"../../../docs/examples"}, pod: "blue/server", from: c.from, to: c.to, proto: "udp", port: c.port,
			onNode: true, agentRuleFlags: agentRuleFlags{networkPlugins: policy.DefaultNetworkPlugins}}
		if c.from != "" {
			o.proto = "tcp"
		}
		var out strings.Builder
		if err := runExplain(ctx, o, node, nil, &out); err != nil || strings.Contains(out.String(), "DISAGREEMENT") || !containsAll(out.String(), c.want) {
			t.Errorf("from %q to %q port %d: %v, want %q in:\n%s", c.from, c.to, c.port, err, c.want, out.String())
		}
	}
	// The PF reports a MAC other than the pod's network-status: no guess.
	sw.SetVFMAC("0000:3b:00.2", net.HardwareAddr{0x02, 0, 0, 0, 0, 0x99})
	o := &explainOptions{files: []string{"../../../docs/examples"}, pod: "blue/server", from: "10.10.0.20", proto: "tcp", port: 8080,
		onNode: true, agentRuleFlags: agentRuleFlags{networkPlugins: policy.DefaultNetworkPlugins}}
	if err := runExplain(ctx, o, node, nil, io.Discard); err == nil || !strings.Contains(err.Error(), "the PF reports MAC 02:00:00:00:00:99") {
		t.Errorf("MACs disagree: %v", err)
	}
}
