//go:build kernel

package app

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// TestKernelCleanupRemovesOnlyOurs runs `multi-networkpolicy-tc cleanup`
// on a node with the agent's filters on two representors and other tools'
// filters beside them (chain 0 at another pref, another chain, a matchall,
// and a device with only foreign filters): ours go, the others stay with
// their clsact qdiscs.
func TestKernelCleanupRemovesOnlyOurs(t *testing.T) {
	datapath.RequireBed(t)
	ctx := context.Background()
	for _, dev := range []string{"cln0", "cln1", "cln2"} {
		datapath.Run(t, "ip", "link", "add", dev, "type", "veth", "peer", "name", dev+"p")
		datapath.Run(t, "ip", "link", "set", dev, "up")
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", dev).Run() })
	}
	for _, dev := range []string{"cln0", "cln2"} {
		datapath.Run(t, "tc", "qdisc", "add", "dev", dev, "clsact")
		datapath.Run(t, "tc", "filter", "add", "dev", dev, "ingress", "pref", "10", "protocol", "ip", "flower", "ip_proto", "udp", "action", "pass")
		datapath.Run(t, "tc", "filter", "add", "dev", dev, "egress", "chain", "7", "pref", "1", "protocol", "all", "matchall", "action", "pass")
	}
	drv, err := tcdriver.New(tcdriver.Options{}, logrus.StandardLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = drv.Close() }()
	rs := &policy.RuleSet{
		Ingress: policy.DirectionRules{Isolated: true, Stateful: true, AcceptICMP: true, Rules: []policy.Rule{{AnyPeer: true, Ports: []policy.PortMatch{{Protocol: policy.TCP, Port: 80, EndPort: 80}}}}},
		Egress:  policy.DirectionRules{Isolated: true, Stateful: true},
	}
	for _, dev := range []string{"cln0", "cln1"} {
		if err := drv.Apply(ctx, dev, rs); err != nil {
			t.Fatal(err)
		}
	}
	foreignBefore := map[string]string{"cln0": foreignFilters(t, "cln0"), "cln2": foreignFilters(t, "cln2")}
	st, _ := drv.Dump(ctx, "cln0")
	ours := len(st.Ours())

	type report struct {
		DryRun  bool                     `json:"dryRun"`
		Devices []tcdriver.CleanupResult `json:"devices"`
	}
	run := func(args ...string) report {
		t.Helper()
		var out, errOut strings.Builder
		if code := Main(append([]string{"cleanup", "-o", "json"}, args...), &out, &errOut); code != 0 {
			t.Fatalf("cleanup %v: exit %d: %s", args, code, errOut.String())
		}
		var r report
		if err := json.Unmarshal([]byte(out.String()), &r); err != nil {
			t.Fatalf("cleanup -o json: %v: %s", err, out.String())
		}
		return r
	}
	find := func(r report, dev string) tcdriver.CleanupResult {
		for _, d := range r.Devices {
			if d.Dev == dev {
				return d
			}
		}
		return tcdriver.CleanupResult{Dev: "absent"}
	}

	var text, textErr strings.Builder
	if code := Main([]string{"cleanup", "--dry-run", "--dev", "cln0", "--dev", "cln1", "--dev", "cln2"}, &text, &textErr); code != 0 {
		t.Fatalf("cleanup --dry-run: exit %d: %s", code, textErr.String())
	}
	wantLast := fmt.Sprintf("would remove %d filters of ours from 2 devices; 4 foreign filters kept\n", 2*ours)
	if !strings.HasSuffix(text.String(), wantLast) {
		t.Errorf("cleanup --dry-run printed:\n%s\nwant it to end with %q", text.String(), wantLast)
	}
	t.Logf("cleanup --dry-run:\n%s", text.String())

	dry := run("--dry-run")
	if got := find(dry, "cln0"); got.Removed != ours || got.Kept != 2 {
		t.Errorf("dry run on cln0: %+v, want %d ours and 2 foreign", got, ours)
	}
	if st, _ := drv.Dump(ctx, "cln1"); len(st.Ours()) != ours {
		t.Fatalf("the dry run changed cln1:\n%s", st.Canonical())
	}

	done := run()
	want := map[string]tcdriver.CleanupResult{"cln0": {Dev: "cln0", Removed: ours, Kept: 2}, "cln1": {Dev: "cln1", Removed: ours}, "cln2": {Dev: "cln2", Kept: 2}}
	for dev, w := range want {
		if got := find(done, dev); got != w {
			t.Errorf("cleanup on %s: %+v, want %+v", dev, got, w)
		}
	}
	for _, dev := range []string{"cln0", "cln1", "cln2"} {
		st, err := drv.Dump(ctx, dev)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Ours()) != 0 || !st.Clsact {
			t.Errorf("%s after cleanup: want clsact and none of ours:\n%s", dev, st.Canonical())
		}
	}
	for dev, before := range foreignBefore {
		if after := foreignFilters(t, dev); after != before {
			t.Errorf("%s: foreign filters changed:\n%s\n---\n%s", dev, before, after)
		}
	}
}

// foreignFilters is `tc filter show` of dev's foreign chains, as the tc
// tool prints them.
func foreignFilters(t *testing.T, dev string) string {
	t.Helper()
	return datapath.Run(t, "tc", "filter", "show", "dev", dev, "ingress", "pref", "10") +
		datapath.Run(t, "tc", "filter", "show", "dev", dev, "egress", "chain", "7")
}
