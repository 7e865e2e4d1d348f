package policy_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy/manifest"
)

// TestAllowedByNamesRulePeerAndPort: on the docs/examples cluster, the
// reference evaluator names the rule, the peer and the port that allow a
// connection, every one when several do, and nothing when none does.
func TestAllowedByNamesRulePeerAndPort(t *testing.T) {
	objs := &policy.Objects{}
	files, _ := filepath.Glob("../docs/examples/*.yaml")
	for _, f := range files {
		r, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := manifest.Decode(objs, f, r); err != nil {
			t.Fatal(err)
		}
		_ = r.Close()
	}
	server := policy.Attachment{PodNamespace: "blue", PodName: "server", Network: policy.NetworkRef{Namespace: "blue", Name: "sriov-a"}, Interface: "net1"}
	for _, tt := range []struct {
		remote string
		proto  policy.Protocol
		port   uint16
		want   []string
	}{
		{"10.10.0.20", policy.TCP, 8080, []string{"blue/allow-from-red ingress[0] from[0] ports[0]"}},
		{"10.10.0.11", policy.TCP, 8080, []string{"blue/allow-from-red ingress[1] from[0]"}},
		{"10.10.0.11", policy.UDP, 53, []string{"blue/allow-from-red ingress[1] from[0]", "blue/dns-except-intruder ingress[0] from[0] ports[0]"}},
		{"10.10.0.21", policy.TCP, 5005, nil},
	} {
		pkt := policy.Packet{Direction: policy.Ingress, Remote: netip.MustParseAddr(tt.remote), Protocol: tt.proto, Port: tt.port}
		got := policy.AllowedBy(objs, policy.Options{}, server, pkt)
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s %s/%d: %q, want %q", tt.remote, tt.proto, tt.port, got, tt.want)
		}
		if allowed := policy.Evaluate(objs, policy.Options{}, server, pkt); allowed != (len(tt.want) > 0) {
			t.Errorf("%s %s/%d: Evaluate %v, AllowedBy %q", tt.remote, tt.proto, tt.port, allowed, got)
		}
	}
}
