package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/sandbox"
)

const allowFromA = `
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: allow, namespace: NS, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{protocol: TCP, port: PORT}]}]
`

func allow(ns, port string) string {
	return strings.NewReplacer("NS", ns, "PORT", port).Replace(allowFromA)
}

func TestPolicyUpdate(t *testing.T) {
	w := newWorld(t)
	w.namespace("upd", nil)
	net := w.nad("upd", "net", "cx6dx_p0")
	server := w.pod("upd", "server", app("server"), []attach{on(net, addrs(20, 2)...)})
	a := w.pod("upd", "a", app("a"), []attach{on(net, addrs(20, 3)...)})
	w.policy(allow("upd", "80"))
	m := w.expect(net, pods(server, a), tcp80, tcp443)
	w.want(m, a, server, tcp80, true)
	w.want(m, a, server, tcp443, false)
	w.policy(allow("upd", "443"))
	m = w.expect(net, pods(server, a), tcp80, tcp443)
	w.want(m, a, server, tcp80, false)
	w.want(m, a, server, tcp443, true)
	w.deletePolicy("upd", "allow")
	m = w.expect(net, pods(server, a), tcp80, tcp443)
	w.want(m, a, server, tcp80, true)
}

func TestPodLabelChange(t *testing.T) {
	w := newWorld(t)
	w.namespace("relabel", nil)
	net := w.nad("relabel", "net", "cx6dx_p0")
	server := w.pod("relabel", "server", app("server"), []attach{on(net, addrs(21, 2)...)})
	b := w.pod("relabel", "b", app("b"), []attach{on(net, addrs(21, 3)...)})
	w.policy(allow("relabel", "80"))
	m := w.expect(net, pods(server, b), tcp80)
	w.want(m, b, server, tcp80, false)
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": app("a")}})
	if _, err := sb.Clients.Kube.CoreV1().Pods("relabel").Patch(w.ctx, "b", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	m = w.expect(net, pods(server, b), tcp80)
	w.want(m, b, server, tcp80, true)
}

// A deleted pod's rules go with it; the next pod given the same VF gets
// only its own rules.
func TestPodDeletionAndVFReuse(t *testing.T) {
	w := newWorld(t)
	w.namespace("reuse", nil)
	net := w.nad("reuse", "net", "cx6dx_p0")
	a := w.pod("reuse", "a", app("a"), []attach{on(net, addrs(22, 2)...)})
	victim := w.pod("reuse", "victim", app("server"), []attach{on(net, addrs(22, 3)...)})
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: isolate-server, namespace: reuse, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec: {podSelector: {matchLabels: {app: server}}, policyTypes: [Ingress, Egress]}
`)
	m := w.expect(net, pods(a, victim), tcp80)
	w.want(m, a, victim, tcp80, false)
	rep, vf := victim.Attachments[0].Representor, victim.Attachments[0].VFPCI
	if filters(t, rep) == "" {
		t.Fatalf("the isolated pod's representor %s has no filters", rep)
	}
	if err := sb.DeletePod(w.ctx, "reuse", "victim"); err != nil {
		t.Fatal(err)
	}
	// The released VF is closed, as a free VF is, until its next pod's
	// rules are in place.
	waitFor(t, 20*time.Second, "the agent to release "+vf, func() bool {
		return strings.Contains(sb.AgentLog(), "VF released; closed until its next pod") && strings.Contains(sb.AgentLog(), vf)
	})
	if filters(t, rep) == "" {
		t.Errorf("the released VF's representor %s has no filters: open until its next pod is mapped", rep)
	}

	newcomer := w.pod("reuse", "newcomer", app("newcomer"), []attach{on(net, addrs(22, 4)...)})
	if newcomer.Attachments[0].VFPCI != vf {
		t.Fatalf("the newcomer got VF %s, not the freed %s: the reuse case is not exercised", newcomer.Attachments[0].VFPCI, vf)
	}
	m = w.expect(net, pods(a, newcomer), tcp80)
	w.want(m, a, newcomer, tcp80, true)
	w.want(m, newcomer, a, tcp80, true)
	if f := filters(t, rep); f != "" {
		t.Errorf("the newcomer is not isolated but %s has filters:\n%s", rep, f)
	}
}

// TestNewPodNoWindow starts pods under a policy that isolates them and
// probes to and from each from the moment the sandbox has set it up, while
// the agent may not have mapped it yet: a free VF is closed until its pod's
// rules are in place, so no probe is ever delivered.
func TestNewPodNoWindow(t *testing.T) {
	w := newWorld(t)
	w.namespace("nowindow", nil)
	net := w.nad("nowindow", "net", "cx6dx_p0")
	a := w.pod("nowindow", "a", app("a"), []attach{on(net, addrs(26, 2)...)})
	w.policy(`
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: isolate-new, namespace: nowindow, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec: {podSelector: {matchLabels: {app: new}}, policyTypes: [Ingress, Egress]}
`)
	probes, leaks := 0, 0
	var leakedAt []string
	for i := range 3 {
		name := "new" + strconv.Itoa(i)
		start := time.Now()
		p := w.pod("nowindow", name, app("new"), []attach{on(net, addrs(26, 3+i)...)})
		for time.Since(start) < 3*time.Second {
			for _, pair := range [][2]*sandbox.Pod{{a, p}, {p, a}} {
				res, err := sb.ProbeOnce(net, pair[0], pair[1], tcp80, 300*time.Millisecond)
				if err != nil {
					t.Fatal(err)
				}
				probes++
				if res.Delivered {
					leaks++
					leakedAt = append(leakedAt, fmt.Sprintf("%s→%s at %s", pair[0].Name, pair[1].Name, time.Since(start).Round(time.Millisecond)))
				}
			}
		}
		if err := sb.DeletePod(w.ctx, "nowindow", name); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d probes to and from new isolated pods from their first moment, %d delivered", probes, leaks)
	if leaks > 0 {
		t.Errorf("denied probes delivered: %v", leakedAt)
	}
	if probes < 12 {
		t.Errorf("only %d probes: too few to tell", probes)
	}
	// The policy has teeth: a new pod it does not select talks at once.
	other := w.pod("nowindow", "other", app("other"), []attach{on(net, addrs(26, 9)...)})
	m := w.expect(net, pods(a, other), tcp80)
	w.want(m, a, other, tcp80, true)
}

// flows probes an allowed and a denied connection continuously until stop
// is closed, and counts the allowed-flow losses and denied-flow leaks.
type flows struct {
	allowed, denied  int
	lost, leaked     int
	lostAt, leakedAt []string
	mu               sync.Mutex
	wg               sync.WaitGroup
	stop             chan struct{}
	start            time.Time
}

func probeContinuously(net policy.NetworkRef, allowedFrom, deniedFrom, to *sandbox.Pod, p sandbox.Probe) *flows {
	f := &flows{stop: make(chan struct{}), start: time.Now()}
	run := func(from *sandbox.Pod, allowed bool) {
		defer f.wg.Done()
		for {
			select {
			case <-f.stop:
				return
			default:
			}
			res, err := sb.ProbeOnce(net, from, to, p, probeTimeout)
			f.mu.Lock()
			at := time.Since(f.start).Round(10 * time.Millisecond).String()
			switch {
			case allowed:
				f.allowed++
				if err != nil || !res.Delivered {
					f.lost++
					f.lostAt = append(f.lostAt, at+" "+res.String())
				}
			default:
				f.denied++
				if err == nil && res.Delivered {
					f.leaked++
					f.leakedAt = append(f.leakedAt, at)
				}
			}
			f.mu.Unlock()
			time.Sleep(50 * time.Millisecond)
		}
	}
	f.wg.Add(2)
	go run(allowedFrom, true)
	go run(deniedFrom, false)
	return f
}

func (f *flows) finish(t *testing.T, what string) {
	t.Helper()
	close(f.stop)
	f.wg.Wait()
	t.Logf("%s: %d allowed-flow probes (%d lost), %d denied-flow probes (%d leaked)", what, f.allowed, f.lost, f.denied, f.leaked)
	if f.lost > 0 {
		t.Errorf("%s: the allowed flow lost %d probe(s): %v", what, f.lost, f.lostAt)
	}
	if f.leaked > 0 {
		t.Errorf("%s: the denied flow leaked %d probe(s) at %v", what, f.leaked, f.leakedAt)
	}
	if f.allowed < 5 || f.denied < 3 {
		t.Errorf("%s: too few probes to tell (%d allowed, %d denied)", what, f.allowed, f.denied)
	}
}

func restartWorld(t *testing.T, ns string, n int) (*world, policy.NetworkRef, *sandbox.Pod, *sandbox.Pod, *sandbox.Pod) {
	w := newWorld(t)
	w.namespace(ns, nil)
	net := w.nad(ns, "net", "cx6dx_p0")
	server := w.pod(ns, "server", app("server"), []attach{on(net, addrs(n, 2)...)})
	a := w.pod(ns, "a", app("a"), []attach{on(net, addrs(n, 3)...)})
	b := w.pod(ns, "b", app("b"), []attach{on(net, addrs(n, 4)...)})
	w.policy(allow(ns, "80"))
	m := w.expect(net, pods(server, a, b), tcp80)
	w.want(m, a, server, tcp80, true)
	w.want(m, b, server, tcp80, false)
	return w, net, server, a, b
}

// The agent stops (SIGTERM, as in a rolling update) and crashes (SIGKILL);
// the rules stay in the kernel meanwhile, and the new agent adopts them
// without a gap.
func TestAgentRestartKeepsEnforcing(t *testing.T) {
	w, net, server, a, b := restartWorld(t, "agent-restart", 23)
	rep := server.Attachments[0].Representor
	before := filters(t, rep)
	f := probeContinuously(net, a, b, server, tcp80)
	time.Sleep(time.Second)
	sb.StopAgent()
	time.Sleep(2 * time.Second)
	if after := filters(t, rep); after != before {
		t.Errorf("the stopped agent changed %s's filters:\nbefore:\n%s\nafter:\n%s", rep, before, after)
	}
	if err := sb.StartAgent(w.ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	sb.KillAgent()
	time.Sleep(time.Second)
	if err := sb.StartAgent(w.ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	f.finish(t, "agent stop, start, kill, start")
	// The new agent still follows changes.
	w.policy(allow("agent-restart", "443"))
	m := w.expect(net, pods(server, a, b), tcp80, tcp443)
	w.want(m, a, server, tcp443, true)
	w.want(m, a, server, tcp80, false)
}

// The API server goes away: enforcement stays; when it is back, the agent
// follows changes again.
func TestAPIServerRestart(t *testing.T) {
	w, net, server, a, b := restartWorld(t, "api-restart", 24)
	f := probeContinuously(net, a, b, server, tcp80)
	time.Sleep(time.Second)
	sb.Kube.StopAPIServer()
	time.Sleep(5 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := sb.Kube.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	f.finish(t, "API server outage")
	w.policy(allow("api-restart", "443"))
	m := w.expect(net, pods(server, a, b), tcp80, tcp443)
	w.want(m, a, server, tcp443, true)
	w.want(m, a, server, tcp80, false)
}

// The kubelet's PodResources socket goes away and comes back: enforcement
// stays, and a pod started afterwards is enforced (the agent reconnected).
func TestKubeletRestart(t *testing.T) {
	w, net, server, a, b := restartWorld(t, "kubelet-restart", 25)
	f := probeContinuously(net, a, b, server, tcp80)
	time.Sleep(time.Second)
	if err := sb.Node.RestartPodResources(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	f.finish(t, "kubelet restart")
	server2 := w.pod("kubelet-restart", "server2", app("server"), []attach{on(net, addrs(25, 5)...)})
	m := w.expect(net, pods(server2, a, b), tcp80)
	w.want(m, a, server2, tcp80, true)
	w.want(m, b, server2, tcp80, false)
}

// filters is what tc shows on both hooks of dev.
func filters(t *testing.T, dev string) string {
	t.Helper()
	var b strings.Builder
	for _, hook := range []string{"ingress", "egress"} {
		out, err := exec.Command("tc", "filter", "show", "dev", dev, hook).CombinedOutput()
		if err != nil {
			t.Fatalf("tc filter show dev %s %s: %v\n%s", dev, hook, err, out)
		}
		b.Write(out)
	}
	return strings.TrimSpace(b.String())
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", within, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

const cutPolicy = `
apiVersion: k8s.cni.cncf.io/v1beta1
kind: MultiNetworkPolicy
metadata: {name: server, namespace: cut, annotations: {k8s.v1.cni.cncf.io/policy-for: net}}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: PORTS}]
`

// TestTightenedPolicyCutsConnections: a long-lived TCP connection and a UDP
// flow from a to the server, both allowed, stop passing once the policy no
// longer allows them: the agent removes their conntrack entries, so their
// next packets are judged as new. Without the cut they would pass as
// established for as long as they last.
func TestTightenedPolicyCutsConnections(t *testing.T) {
	w := newWorld(t)
	w.namespace("cut", nil)
	network := w.nad("cut", "net", "cx6dx_p0")
	server := w.pod("cut", "server", app("server"), []attach{on(network, addrs(27, 2)...)})
	a := w.pod("cut", "a", app("a"), []attach{on(network, addrs(27, 3)...)})
	w.policy(strings.Replace(cutPolicy, "PORTS", "[{protocol: TCP, port: 7070}, {protocol: UDP, port: 7071}, {protocol: TCP, port: 80}]", 1))
	m := w.expect(network, pods(server, a), tcp80)
	w.want(m, a, server, tcp80, true)

	addr := server.Attachment(network).IPs[0].String()
	tcpSrv, err := datapath.ServeIn(server.NS, datapath.TCP, 7070)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tcpSrv.Close() }()
	udpSrv, err := datapath.ServeIn(server.NS, datapath.UDP, 7071)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = udpSrv.Close() }()
	var tcpConn, udpConn net.Conn
	if err := datapath.Do(a.NS, func() error {
		var err error
		if tcpConn, err = net.DialTimeout("tcp", net.JoinHostPort(addr, "7070"), 2*time.Second); err != nil {
			return err
		}
		udpConn, err = net.Dial("udp", net.JoinHostPort(addr, "7071"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// The test server ends a TCP connection 10s after accepting it: the
	// cut must be seen before, or the end of the connection would pass
	// for it.
	connected := time.Now()
	defer func() { _ = tcpConn.Close(); _ = udpConn.Close() }()
	reader := bufio.NewReader(tcpConn)
	n := 0
	// send writes one request on each flow; true when the server read it.
	send := func() (tcpOK, udpOK bool) {
		n++
		token := strconv.Itoa(n)
		_ = tcpConn.SetDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := tcpConn.Write([]byte("t" + token + "\n")); err == nil {
			_, _ = reader.ReadString('\n')
		}
		_ = udpConn.SetDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := udpConn.Write([]byte("u" + token)); err == nil {
			_, _ = udpConn.Read(make([]byte, 64))
		}
		return tcpSrv.Saw("t" + token), udpSrv.Saw("u" + token)
	}
	for range 3 {
		if tcpOK, udpOK := send(); !tcpOK || !udpOK {
			t.Fatalf("allowed flows do not pass: tcp %v udp %v", tcpOK, udpOK)
		}
	}
	// Tighten: port 80 only. The flows are established; only the cut stops them.
	w.policy(strings.Replace(cutPolicy, "PORTS", "[{protocol: TCP, port: 80}]", 1))
	start := time.Now()
	var tcpCut, udpCut time.Duration
	for time.Since(connected) < 8*time.Second && (tcpCut == 0 || udpCut == 0) {
		tcpOK, udpOK := send()
		if !tcpOK && tcpCut == 0 {
			tcpCut = time.Since(start)
		}
		if !udpOK && udpCut == 0 {
			udpCut = time.Since(start)
		}
	}
	if tcpCut == 0 || udpCut == 0 {
		t.Fatalf("after the tightening, the established flows still pass %v later: tcp cut %v, udp cut %v", time.Since(start).Round(time.Millisecond), tcpCut, udpCut)
	}
	// Once cut, they stay cut.
	for range 3 {
		if tcpOK, udpOK := send(); tcpOK || udpOK {
			t.Errorf("a cut flow passed again: tcp %v udp %v", tcpOK, udpOK)
		}
	}
	t.Logf("established TCP cut %v and UDP %v after the tightened policy was applied", tcpCut.Round(time.Millisecond), udpCut.Round(time.Millisecond))
}
