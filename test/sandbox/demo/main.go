// Command demo is what `make demo` runs inside the kernel test bed: the
// whole stack of test/sandbox, the example cluster of docs/examples, and a
// connectivity matrix measured with real probes before any policy and after
// each example policy, checked against the reference evaluator.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/sandbox"
)

var begin = time.Now()

var debug = flag.Bool("debug", false, "print the agent log and tc state when a matrix disagrees with the reference evaluator")

func step(format string, args ...any) {
	fmt.Printf("\n\033[1m==> [%5.1fs] %s\033[0m\n", time.Since(begin).Seconds(), fmt.Sprintf(format, args...))
}

func say(format string, args ...any) {
	fmt.Printf("    [%5.1fs] %s\n", time.Since(begin).Seconds(), fmt.Sprintf(format, args...))
}

// The probes of every matrix: the ports the example policies talk about.
var probes = []sandbox.Probe{
	{Proto: datapath.TCP, Port: 8080},
	{Proto: datapath.TCP, Port: 8080, IPv6: true},
	{Proto: datapath.UDP, Port: 53},
	{Proto: datapath.TCP, Port: 5005},
	{Proto: datapath.SCTP, Port: 7777},
}

func main() {
	repo := flag.String("repo", ".", "repository root")
	dir := flag.String("dir", "/tmp/sandbox", "state and logs")
	kube := flag.String("kube-info", "", "the API server's info file (hack/sandbox/run.sh passes it)")
	dp := flag.String("sriovdp", "", "sriov-network-device-plugin binary")
	agent := flag.String("agent", "", "multi-networkpolicy-tc binary")
	flag.Parse()
	if err := run(*repo, *dir, *kube, *dp, *agent); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo: FAILED: %v\n", err)
		if logs, _ := filepath.Glob(filepath.Join(*dir, "*.log")); len(logs) > 0 {
			fmt.Fprintf(os.Stderr, "logs in the guest: %s\n", strings.Join(logs, " "))
		}
		os.Exit(1)
	}
}

func run(repo, dir, kube, dp, agent string) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	network := policy.NetworkRef{Namespace: "blue", Name: "sriov-a"}
	examples := filepath.Join(repo, "docs", "examples")

	step("starting the sandbox inside the kernel test bed (UML guest; kube-apiserver and etcd on the host)")
	sb, err := sandbox.Start(ctx, sandbox.Options{Repo: repo, Dir: dir, KubeInfo: kube, DevicePlugin: dp, Agent: agent, Say: say})
	if err != nil {
		return err
	}
	defer func() {
		step("tearing down")
		sb.Stop()
		say("stopped pods (VFs back to the host), agent, device plugin, kubelet simulator, kube-apiserver, etcd")
		left := otherProcesses()
		if len(left) > 0 && err == nil {
			err = fmt.Errorf("processes left running in the guest: %v", left)
		} else if err == nil {
			say("nothing left running in the guest; it powers off next")
		}
	}()

	step("creating the example cluster: %s", "docs/examples/00-cluster.yaml")
	say("namespaces blue and red, NAD blue/sriov-a (accelerated-bridge, resource %s/cx6dx_p0), 4 pods", sandbox.ResourcePrefix)
	applied, err := sb.ApplyManifest(ctx, filepath.Join(examples, "00-cluster.yaml"))
	if err != nil {
		return err
	}
	for _, p := range applied.Pods {
		a := p.Attachments[0]
		say("pod %-14s VF %s -> %s in the pod, representor %s on %s, IPs %v", p.Key(), a.VFPCI, a.Interface, a.Representor, sandbox.Bridge, a.IPs)
	}
	// A pod of another node: no Pod object, reached through the uplink;
	// only the local pods' rules decide its connections, and policies can
	// name it only by ipBlock (03-ipblock-except admits it).
	remote, err := sb.AddRemote(ctx, network, "peer", "10.10.0.100/24", "fd10::100/64")
	if err != nil {
		return err
	}
	say("remote pod %s (another node's, no Pod object) in namespace %s behind uplink %s on %s, IPs %v",
		remote.Key(), sandbox.OutsideNamespace(0), remote.Attachments[0].Representor, sandbox.Bridge, remote.Attachments[0].IPs)
	pods := append(append([]*sandbox.Pod{}, applied.Pods...), remote)

	step("multi-networkpolicy-tc debug mappings (PodResources + sysfs + API server)")
	out, err := sb.RunAgentCommand("debug", "mappings", "--podresources-socket", sandbox.PodResourcesSocket)
	fmt.Print(indent(out))
	if err != nil {
		return fmt.Errorf("debug mappings: %w", err)
	}

	timeout := 1500 * time.Millisecond
	step("connectivity before any policy (real TCP/UDP/SCTP probes between the pods' VFs, and through the uplink to and from the remote pod)")
	m, err := sb.Converge(ctx, network, pods, probes, timeout, 10*time.Second)
	if err != nil {
		return err
	}
	fmt.Print(m.Format())
	mismatches := len(m.Mismatches())

	files, _ := filepath.Glob(filepath.Join(examples, "0[1-9]-*.yaml"))
	for _, f := range files {
		step("applying %s: %s", filepath.Base(f), firstComment(f))
		if _, err := sb.ApplyManifest(ctx, f); err != nil {
			return err
		}
		start := time.Now()
		m, err := sb.Converge(ctx, network, pods, probes, timeout, 15*time.Second)
		if err != nil {
			return err
		}
		say("measured %.1fs after the apply", time.Since(start).Seconds())
		if len(m.Mismatches()) > 0 && *debug {
			fmt.Fprintf(os.Stderr, "agent log (tail):\n%s\n", sb.AgentLog())
			out, _ := exec.Command("tc", "filter", "show", "dev", "ens1f0npf0vf0", "egress").CombinedOutput()
			fmt.Fprintf(os.Stderr, "tc:\n%s\n", out)
		}
		fmt.Print(m.Format())
		mismatches += len(m.Mismatches())
	}

	server := sb.Pod("blue", "server")
	rep := server.Attachments[0].Representor
	step("tc rules programmed on %s (representor of blue/server's VF)", rep)
	for _, hook := range []string{"ingress", "egress"} {
		fmt.Printf("    --- tc filter show dev %s %s (the pod's %s)\n", rep, hook, map[string]string{"ingress": "egress", "egress": "ingress"}[hook])
		out, _ := exec.Command("tc", "filter", "show", "dev", rep, hook).CombinedOutput()
		fmt.Print(indent(string(out)))
	}

	step("pod deletion: the agent removes the pods' rules; a freed VF of an enforced network's resource stays closed until its next pod's rules are in place")
	for _, p := range applied.Pods {
		if err := sb.DeletePod(ctx, p.Namespace, p.Name); err != nil {
			return err
		}
	}
	if err := sb.DeleteRemote(remote.Name); err != nil {
		return err
	}
	if err := waitClosed(ctx, rep, 15*time.Second); err != nil {
		return err
	}
	say("%s holds no rule of its pod any more: closed (no filter matches an address or a port)", rep)
	if mismatches > 0 {
		fmt.Fprintf(os.Stderr, "agent log (tail):\n%s\n", sb.AgentLog())
		return fmt.Errorf("%d probe(s) disagreed with the reference evaluator", mismatches)
	}
	return nil
}

// otherProcesses lists the user processes of the guest other than this
// one and its ancestors (the bed's init and shell): kernel threads have an
// empty cmdline.
func otherProcesses() []string {
	ancestors := map[int]bool{}
	for pid := os.Getpid(); pid > 0; {
		ancestors[pid] = true
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			break
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) < 2 {
			break
		}
		ppid := 0
		_, _ = fmt.Sscan(f[1], &ppid)
		pid = ppid
	}
	var left []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid := 0
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil || ancestors[pid] {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(cmdline) == 0 {
			continue
		}
		left = append(left, fmt.Sprintf("%d:%s", pid, strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " ")))
	}
	return left
}

// waitClosed waits until dev holds the program of a closed free VF: filters
// on its ingress hook (the VF's traffic is dropped) and none that matches an
// address or a port (what a pod's rules or its peers' would).
func waitClosed(ctx context.Context, dev string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		in, _ := exec.CommandContext(ctx, "tc", "filter", "show", "dev", dev, "ingress").CombinedOutput()
		eg, _ := exec.CommandContext(ctx, "tc", "filter", "show", "dev", dev, "egress").CombinedOutput()
		all := string(in) + string(eg)
		closed := strings.Contains(string(in), "gact action drop")
		for _, k := range []string{"src_ip", "dst_ip", "src_port", "dst_port"} {
			closed = closed && !strings.Contains(all, k)
		}
		if closed {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is not the closed program of a free VF %s after its pod was deleted:\n%s%s", dev, within, in, eg)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// firstComment is the file's leading comment block, on one line.
func firstComment(path string) string {
	b, _ := os.ReadFile(path)
	var parts []string
	for _, l := range strings.Split(string(b), "\n") {
		s, ok := strings.CutPrefix(l, "#")
		if !ok {
			break
		}
		parts = append(parts, strings.TrimSpace(s))
	}
	return strings.Join(parts, " ")
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("    " + l + "\n")
	}
	return b.String()
}
