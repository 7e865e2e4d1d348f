package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// These tests run the real binary, built once with the ldflags `make build`
// passes, as a DaemonSet runs it.

const versionPkg = "github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/cmd/multi-networkpolicy-tc/app"

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mnp-tc-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "multi-networkpolicy-tc")
	ldflags := fmt.Sprintf("-X %[1]s.version=v9.8.7-test -X %[1]s.commit=0123abc -X %[1]s.buildDate=2026-01-02T03:04:05Z", versionPkg)
	build := exec.Command("go", "build", "-ldflags", ldflags, "-o", binary, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func TestVersion(t *testing.T) {
	want := "multi-networkpolicy-tc v9.8.7-test (commit 0123abc, built 2026-01-02T03:04:05Z,"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, err := exec.Command(binary, args...).Output()
		if err != nil || !strings.HasPrefix(string(out), want) {
			t.Errorf("%v: %q, %v; want prefix %q", args, out, err, want)
		}
	}
	out, err := exec.Command(binary, "version", "-o", "json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Version, Commit, BuildDate string }
	if err := json.Unmarshal(out, &v); err != nil || v.Version != "v9.8.7-test" || v.Commit != "0123abc" || v.BuildDate != "2026-01-02T03:04:05Z" {
		t.Errorf("version -o json = %s (%v)", out, err)
	}
}

// TestUpstreamDaemonSetArguments runs the agent with the argument lists of
// upstream multi-networkpolicy-iptables' and multi-networkpolicy-tc's
// DaemonSets verbatim (testdata/upstream/*.args), followed by the flags
// that put a DaemonSet's environment on a development machine: a kubeconfig
// (nothing listens there, so the informers keep retrying, as they do when
// the API server is down), a PodResources socket, free ports and a node
// name. It asserts the agent starts and stays up (its liveness probe
// answers), logs each upstream flag once as mapped or ignored, exports its
// build on /metrics, says that the kubelet's socket is missing, and exits
// on SIGTERM.
func TestUpstreamDaemonSetArguments(t *testing.T) {
	files, err := filepath.Glob("testdata/upstream/*.args")
	if err != nil || len(files) < 3 {
		t.Fatalf("upstream argument lists: %v %v", files, err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".args"), func(t *testing.T) {
			upstream := readArgs(t, file)
			dir := t.TempDir()
			kubeconfig := filepath.Join(dir, "kubeconfig")
			if err := os.WriteFile(kubeconfig, []byte(unreachableKubeconfig), 0o600); err != nil {
				t.Fatal(err)
			}
			args := append(slices.Clone(upstream),
				"--kubeconfig="+kubeconfig, "--hostname-override=node-1",
				"--podresources-socket="+filepath.Join(dir, "kubelet.sock"),
				"--metrics-bind-address=127.0.0.1:0", "--health-probe-bind-address=127.0.0.1:0",
				"--log-format=json")
			cmd := exec.Command(binary, args...)
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

			// Read the log up to the health server's address.
			lines := bufio.NewScanner(stderr)
			var logged []map[string]any
			healthAddr, metricsAddr := "", ""
			for healthAddr == "" && lines.Scan() {
				var entry map[string]any
				if err := json.Unmarshal(lines.Bytes(), &entry); err != nil {
					t.Fatalf("log line is not JSON (%v): %s", err, lines.Text())
				}
				logged = append(logged, entry)
				switch entry["msg"] {
				case "serving health probes":
					healthAddr, _ = entry["address"].(string)
				case "serving metrics":
					metricsAddr, _ = entry["address"].(string)
				}
			}
			if healthAddr == "" {
				_ = cmd.Wait()
				t.Fatalf("the agent exited before serving its probes (%v); log: %v", cmd.ProcessState, logged)
			}
			go func() { _, _ = io.Copy(io.Discard, stderr) }()
			resp, err := http.Get("http://" + healthAddr + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("/healthz: %s", resp.Status)
			}
			if metrics := get(t, "http://"+metricsAddr+"/metrics"); !strings.Contains(metrics, `multi_networkpolicy_tc_build_info{build_date="2026-01-02T03:04:05Z",commit="0123abc",go_version="`) ||
				!strings.Contains(metrics, `version="v9.8.7-test"} 1`) {
				t.Errorf("/metrics has no build_info of this build:\n%s", metrics)
			}

			for _, arg := range upstream {
				name := flagName(arg)
				if name == "accept-icmp" || name == "accept-icmpv6" || name == "network-plugins" || name == "pod-rules-path" || name == "v" {
					continue // our own flags, same spelling and meaning
				}
				n := 0
				for _, e := range logged {
					if msg, _ := e["msg"].(string); e["level"] == "warning" && (strings.HasPrefix(msg, "flag --"+name+" ") || strings.HasPrefix(msg, "flag --"+name+"=")) {
						n++
					}
				}
				if n != 1 {
					t.Errorf("%s: logged %d times as mapped or ignored, want once; log: %v", arg, n, logged)
				}
			}
			// Nothing serves the test's PodResources socket: the agent keeps
			// running (the kubelet may come later) but says so at once.
			if !slices.ContainsFunc(logged, func(e map[string]any) bool {
				msg, _ := e["msg"].(string)
				return e["level"] == "error" && strings.Contains(msg, "mount the kubelet's pod-resources directory")
			}) {
				t.Errorf("no error about the missing PodResources socket: %v", logged)
			}
			if !slices.ContainsFunc(logged, func(e map[string]any) bool { return e["version"] == "v9.8.7-test" }) {
				t.Errorf("the version is not logged at start: %v", logged)
			}

			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			_ = cmd.Wait()
			if !cmd.ProcessState.Exited() {
				t.Errorf("after SIGTERM: %v, want an exit", cmd.ProcessState)
			}
		})
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func readArgs(t *testing.T, file string) []string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for line := range strings.SplitSeq(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			args = append(args, line)
		}
	}
	return args
}

func flagName(arg string) string {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	return name
}

const unreachableKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1"}
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
users:
- name: u
  user: {token: t}
`
