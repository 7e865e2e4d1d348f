package tcdriver

import (
	"bytes"
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

var update = flag.Bool("update", false, "rewrite golden files")

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

func att(name string) policy.Attachment {
	return policy.Attachment{PodNamespace: "demo", PodName: name, Network: policy.NetworkRef{Namespace: "demo", Name: "sriov-net"}, Interface: "net1"}
}

// goldenRuleSets mirror the scenarios of docs/examples as the policy core
// computes them.
var goldenRuleSets = map[string]*policy.RuleSet{
	// default-deny: one policy with empty podSelector and both types.
	"default-deny": {Attachment: att("db-0"),
		Ingress: policy.DirectionRules{Isolated: true, Stateful: true},
		Egress:  policy.DirectionRules{Isolated: true, Stateful: true}},
	// allow-from-namespace: ingress from the pods of namespace "frontend"
	// (three pod IPs) to TCP 5432; egress not isolated (track-only hook).
	"allow-from-namespace": {Attachment: att("db-0"),
		Ingress: policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{{
			Peers:   pfx("10.56.0.10/32", "10.56.0.11/32", "10.56.0.12/32"),
			Ports:   []policy.PortMatch{{Protocol: policy.TCP, Port: 5432, EndPort: 5432}},
			Origins: []string{"demo/allow-frontend ingress[0]"}}}}},
	// ipblock-except: egress to 192.168.0.0/16 except 192.168.1.0/24,
	// aggregated to disjoint prefixes, any port; DNS to one server.
	"ipblock-except": {Attachment: att("app-0"),
		Egress: policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{
			{Peers: pfx("192.168.0.0/24", "192.168.2.0/23", "192.168.4.0/22", "192.168.8.0/21", "192.168.16.0/20",
				"192.168.32.0/19", "192.168.64.0/18", "192.168.128.0/17"), Origins: []string{"demo/egress-lan egress[0]"}},
			{Peers: pfx("10.96.0.10/32"), Ports: []policy.PortMatch{{Protocol: policy.UDP, Port: 53, EndPort: 53}, {Protocol: policy.TCP, Port: 53, EndPort: 53}},
				Origins: []string{"demo/egress-lan egress[1]"}},
		}}},
	// port-ranges: ingress from anywhere to TCP 8000-8080 and all of SCTP.
	"port-ranges": {Attachment: att("media-0"),
		Ingress: policy.DirectionRules{Isolated: true, Stateful: true, AcceptICMP: true, AcceptICMPv6: true, Rules: []policy.Rule{{
			AnyPeer: true,
			Ports:   []policy.PortMatch{{Protocol: policy.TCP, Port: 8000, EndPort: 8080}, {Protocol: policy.SCTP}},
			Origins: []string{"demo/media ingress[0]"}}}}},
	// ipv6: dual-stack peers on both directions.
	"ipv6": {Attachment: att("web-0"),
		Ingress: policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{{
			Peers:   pfx("10.56.0.0/24", "fd00:56::/64"),
			Ports:   []policy.PortMatch{{Protocol: policy.TCP, Port: 443, EndPort: 443}},
			Origins: []string{"demo/web ingress[0]"}}}},
		Egress: policy.DirectionRules{Isolated: true, Stateful: true, Rules: []policy.Rule{{
			Peers:   pfx("fd00:57::5/128"),
			Origins: []string{"demo/web egress[0]"}}}}},
}

// TestGoldenPipelines: the compiled pipelines of the example scenarios, per
// offload profile, as `tc -batch` commands (what `render -o tc` prints) and
// as the canonical dump of the fake after Apply.
func TestGoldenPipelines(t *testing.T) {
	for name, rs := range goldenRuleSets {
		for _, prof := range Profiles {
			t.Run(name+"/"+prof.Name, func(t *testing.T) {
				opts := Options{Profile: prof}
				var batch bytes.Buffer
				if err := WriteBatch(&batch, "rep0", rs, opts); err != nil {
					t.Fatal(err)
				}
				golden(t, goldenPath(name, prof, ".tc"), batch.Bytes())
				fake := NewFake(opts, "rep0")
				if err := fake.Apply(context.Background(), "rep0", rs); err != nil {
					t.Fatal(err)
				}
				st, _ := fake.Dump(context.Background(), "rep0")
				golden(t, goldenPath(name, prof, ".dump"), []byte(st.Canonical()))
			})
		}
	}
}

// goldenPath is testdata/NAME.EXT for the software profile and
// testdata/NAME.PROFILE.EXT for the others.
func goldenPath(name string, prof Profile, ext string) string {
	if prof.Hardware {
		name += "." + prof.Name
	}
	return filepath.Join("testdata", name+ext)
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./tcdriver -run Golden -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run go test ./tcdriver -run Golden -update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
