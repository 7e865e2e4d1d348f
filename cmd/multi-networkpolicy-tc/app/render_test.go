package app

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite golden files")

func runCLI(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(args, &out, &errb)
	return out.String(), errb.String(), code
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateGolden {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/multi-networkpolicy-tc/app -run Render -update)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file (-update to accept):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// TestRenderExamples renders every docs/examples scenario in each format,
// -o tc for each offload profile (each filter marked with whether the
// profile offloads it).
func TestRenderExamples(t *testing.T) {
	for _, tc := range []struct{ name, format, profile string }{
		{"text", "text", ""}, {"json", "json", ""},
		{"tc", "tc", "software"}, {"tc.mlx5-6.1", "tc", "mlx5-6.1"}, {"tc.mlx5-6.3", "tc", "mlx5-6.3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"render", "-f", "../../../docs/examples", "-o", tc.format}
			if tc.profile != "" {
				args = append(args, "--offload-profile", tc.profile)
			}
			out, errOut, code := runCLI(t, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			golden(t, "render/examples."+tc.name, out)
		})
	}
}

// TestRenderJSONFieldNames: every key of render -o json is lowerCamelCase,
// as Kubernetes API objects are.
func TestRenderJSONFieldNames(t *testing.T) {
	out, errOut, code := runCLI(t, "render", "-f", "../../../docs/examples", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var doc any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	camel := regexp.MustCompile(`^[a-z][a-zA-Z0-9]*$`)
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if !camel.MatchString(k) {
					t.Errorf("%s.%s: not lowerCamelCase", path, k)
				}
				walk(path+"."+k, e)
			}
		case []any:
			for i, e := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), e)
			}
		}
	}
	walk("", doc)
}

func TestRenderOnePod(t *testing.T) {
	out, errOut, code := runCLI(t, "render", "-f", "../../../docs/examples", "--pod", "blue/server")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.HasPrefix(out, "blue/server net1 (network blue/sriov-a)\n") || strings.Contains(out, "red/") {
		t.Fatalf("want only blue/server:\n%s", out)
	}
}

func TestRenderBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ns := "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n"
	cases := []struct {
		name     string
		args     []string
		code     int
		contains []string
	}{
		{"bad YAML names file and document", []string{"-f", write("bad.yaml", ns+"---\nkind: [unclosed\n")}, 2,
			[]string{"bad.yaml: document 2"}},
		{"unknown kind", []string{"-f", write("kind.yaml", ns+"---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")}, 2,
			[]string{"kind.yaml: document 2", "unsupported kind ConfigMap"}},
		{"unknown field is not silently dropped", []string{"-f", write("field.yaml", "apiVersion: k8s.cni.cncf.io/v1beta1\nkind: MultiNetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  ingres: []\n")}, 2,
			[]string{"field.yaml: document 1", "unknown field"}},
		{"missing file", []string{"-f", filepath.Join(dir, "nope.yaml")}, 2, []string{"nope.yaml"}},
		{"unknown pod", []string{"-f", "../../../docs/examples", "--pod", "x/y"}, 2, []string{"--pod x/y"}},
		{"invalid policy field renders fail-closed and exits 3", []string{"-f", "../../../docs/examples/00-cluster.yaml", "-f",
			write("cidr.yaml", "apiVersion: k8s.cni.cncf.io/v1beta1\nkind: MultiNetworkPolicy\nmetadata: {name: p, namespace: blue, annotations: {k8s.v1.cni.cncf.io/policy-for: sriov-a}}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/33}\n")}, 3,
			[]string{"MultiNetworkPolicy blue/p: spec.ingress[0].from[0].ipBlock.cidr", "allow nothing else"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, append([]string{"render"}, c.args...)...)
			if code != c.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, c.code, out, errOut)
			}
			for _, s := range c.contains {
				if !strings.Contains(out+errOut, s) {
					t.Errorf("output lacks %q:\nstdout: %s\nstderr: %s", s, out, errOut)
				}
			}
		})
	}
}

// TestHelpExamplesRun runs every example of --help that reads docs/examples
// (from the repository root), so that the help never shows a path or pod
// that does not exist.
func TestHelpExamplesRun(t *testing.T) {
	n := 0
	for _, cmd := range NewRootCommand(io.Discard, io.Discard).Commands() {
		for line := range strings.SplitSeq(cmd.Example, "\n") {
			args := strings.Fields(line)
			if len(args) < 2 || args[0] != "multi-networkpolicy-tc" || !strings.Contains(line, "docs/examples") {
				continue
			}
			for i, a := range args {
				args[i] = strings.ReplaceAll(a, "docs/examples", "../../../docs/examples")
			}
			n++
			if _, errOut, code := runCLI(t, args[1:]...); code != 0 {
				t.Errorf("%s: exit %d: %s", line, code, errOut)
			}
		}
	}
	if n < 4 {
		t.Errorf("ran %d examples; want the render and explain ones", n)
	}
}

// TestRenderSaysWhenAPolicyEnforcesNothing: a policy-for naming a network
// without NAD, or one whose plugin is not enforced, gets a line on stderr
// naming which; the render itself succeeds.
func TestRenderSaysWhenAPolicyEnforcesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.yaml")
	manifests := `apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: mac, namespace: blue}
spec: {config: '{"cniVersion":"0.4.0","name":"mac","type":"macvlan"}'}
---
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: p, namespace: blue, annotations: {k8s.v1.cni.cncf.io/policy-for: "sriov-a, nope, mac"}}
spec: {podSelector: {}}
`
	if err := os.WriteFile(path, []byte(manifests), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runCLI(t, "render", "-f", "../../../docs/examples/00-cluster.yaml", "-f", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := "enforces nothing: MultiNetworkPolicy blue/p: network blue/mac: its plugin type \"macvlan\" is not one of --network-plugins\n" +
		"enforces nothing: MultiNetworkPolicy blue/p: network blue/nope: no NetworkAttachmentDefinition blue/nope exists\n"
	if errOut != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", errOut, want)
	}
}

// TestRenderBridgePlacement: -o tc shows the bridge placement by default,
// --pod keeps the uplink and the pod's port, a port without MAC is closed
// alone (and said on stderr), --placement representor is the old output.
func TestRenderBridgePlacement(t *testing.T) {
	noMAC := filepath.Join(t.TempDir(), "nomac.yaml")
	b, err := os.ReadFile("../../../docs/examples/00-cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(noMAC, []byte(strings.ReplaceAll(string(b), `, "mac": "02:00:0a:0a:00:10"`, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name        string
		args        []string
		has, hasNot []string
		stderr      string
	}{
		{"every port of the bridge", []string{"-f", "../../../docs/examples"},
			[]string{"# bridge blue/sriov-a port uplink", "# bridge blue/sriov-a port blue/server/net1", "# bridge blue/sriov-a port red/intruder/net1",
				"filter add dev uplink ingress chain 0 pref 49152 protocol all", "dst_mac 02:00:0a:0a:00:10 action gact goto chain"},
			[]string{" egress "}, ""},
		{"--pod: the uplink and its port, --dev names it", []string{"-f", "../../../docs/examples", "--pod", "blue/server", "--dev", "eth5", "--uplink", "p0"},
			[]string{"# bridge blue/sriov-a port p0", "# bridge blue/sriov-a port eth5", "filter add dev eth5 ingress"},
			[]string{"port blue/client/net1", "port red/"}, ""},
		{"no MAC: closed alone", []string{"-f", noMAC, "-f", "../../../docs/examples/01-default-deny.yaml"},
			[]string{"port blue/server/net1: closed alone (old placement, isolated both ways)", "filter add dev blue/server/net1 egress"},
			[]string{"dst_mac 02:00:0a:0a:00:10"}, "closed: blue/server net1 (network blue/sriov-a): no MAC address known"},
		{"--placement representor: the old output", []string{"-f", "../../../docs/examples", "--pod", "blue/server", "--placement", "representor"},
			[]string{"on representor REPRESENTOR", "filter add dev REPRESENTOR egress"}, []string{"dst_mac", "# bridge"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runCLI(t, append([]string{"render", "-o", "tc"}, c.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			for _, s := range c.has {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q", s)
				}
			}
			for _, s := range c.hasNot {
				if strings.Contains(out, s) {
					t.Errorf("output has %q", s)
				}
			}
			if !strings.Contains(errOut, c.stderr) {
				t.Errorf("stderr %q lacks %q", errOut, c.stderr)
			}
		})
	}
	if _, errOut, code := runCLI(t, "render", "-o", "tc", "-f", "../../../docs/examples", "--placement", "eswitch"); code != exitBadInput || !strings.Contains(errOut, "--placement") {
		t.Errorf("--placement eswitch: exit %d, %s", code, errOut)
	}
}
