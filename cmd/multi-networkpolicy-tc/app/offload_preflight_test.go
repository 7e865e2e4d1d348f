package app

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	mnpfake "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/client/clientset/versioned/fake"
	nadfake "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/client/clientset/versioned/fake"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/preflight"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// preflightAgent runs an agent whose kubelet can allocate the four VFs of
// PF 0000:3b:00.0 (hVF) and whose preflight reads host.
func preflightAgent(t *testing.T, host preflight.Host, tcOffload string) (*Agent, *Clients) {
	t.Helper()
	clients := &Clients{Kube: kubefake.NewClientset(), MNP: mnpfake.NewSimpleClientset(), NAD: nadfake.NewSimpleClientset()}
	sw := sriov.NewFake().AddPF(hPF, hUplink, true)
	devs := []string{hUplink}
	for i := range hVFs {
		sw.AddVF(hPF, i, hVF(i), hRep(i))
		devs = append(devs, hRep(i))
	}
	opts := *NewAgentOptions()
	opts.HostnameOverride = hNode
	opts.MetricsBindAddress, opts.HealthProbeBindAddress = "0", "0"
	opts.TCOffload = tcOffload
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	a, err := NewAgent(AgentConfig{Options: opts, Clients: clients, PodResources: &fakePodResources{pods: map[string]*podresourcesv1.PodResources{}},
		Resolver: sw, Driver: tcdriver.NewFake(tcdriver.Options{}, devs...), Preflight: host, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "initial programming and preflight", func() bool { return a.ready.Load() })
	return a, clients
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not converged: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// nodeEvents lists the Events on the Node as "Type Reason message".
func nodeEvents(t *testing.T, c *Clients) []string {
	t.Helper()
	list, err := c.Kube.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		if e.InvolvedObject.Kind == "Node" && e.InvolvedObject.Name == hNode && e.InvolvedObject.UID == hNode {
			out = append(out, e.Type+" "+e.Reason+" "+e.Message)
		}
	}
	slices.Sort(out)
	return out
}

func readyz(a *Agent) (int, string) {
	rec := httptest.NewRecorder()
	a.readyz(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	return rec.Code, rec.Body.String()
}

func TestAgentPreflight(t *testing.T) {
	const rep1 = "ens1f0npf0vf1"
	tests := []struct {
		name      string
		tcOffload string
		broken    bool
		wantReady bool
		verdict   preflight.Verdict
		event     string
	}{
		{"tuned node, offload required", "skip-sw", false, true, preflight.Hardware,
			"Normal OffloadInHardware PF 0000:3b:00.0 (ens1f0np0): enforced in hardware"},
		{"representor not offloading, offload required: not ready", "skip-sw", true, false, preflight.SoftwareOnly,
			"Warning OffloadSoftwareOnly PF 0000:3b:00.0 (ens1f0np0): enforced in software only (slow path): hw-tc-offload is off on representor ens1f0npf0vf1: the kernel offloads none of its filters, they run in software (fix: ethtool -K ens1f0npf0vf1 hw-tc-offload on)"},
		{"representor not offloading, auto: ready, reported", "auto", true, true, preflight.SoftwareOnly,
			"Warning OffloadSoftwareOnly PF 0000:3b:00.0 (ens1f0np0): enforced in software only (slow path): hw-tc-offload is off on representor ens1f0npf0vf1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := offloadHost(t)
			if tt.broken {
				host.SetTCOffload(rep1, preflight.Feature{Changeable: true})
			}
			a, clients := preflightAgent(t, host, tt.tcOffload)
			if a.Ready() != tt.wantReady {
				t.Errorf("Ready() = %v, want %v", a.Ready(), tt.wantReady)
			}
			code, body := readyz(a)
			if tt.wantReady && code != http.StatusOK || !tt.wantReady && (code != http.StatusServiceUnavailable ||
				!strings.Contains(body, "not ready: --tc-offload=skip-sw but PF 0000:3b:00.0 (ens1f0np0): enforced in software only (slow path): hw-tc-offload is off on representor ens1f0npf0vf1") ||
				!strings.Contains(body, "fix: ethtool -K ens1f0npf0vf1 hw-tc-offload on")) {
				t.Errorf("/readyz %d %q", code, body)
			}
			for _, v := range preflight.Verdicts {
				want := 0.0
				if v == tt.verdict {
					want = 1
				}
				if got := testutil.ToFloat64(a.metrics.preflight.WithLabelValues(hPF, v.Label())); got != want {
					t.Errorf("preflight{pf=%s,verdict=%s} = %v, want %v", hPF, v.Label(), got, want)
				}
			}
			waitFor(t, "the Node's Event", func() bool { return len(nodeEvents(t, clients)) > 0 })
			if ev := nodeEvents(t, clients); len(ev) != 1 || !strings.HasPrefix(ev[0], tt.event) {
				t.Errorf("Node Events %q, want one starting %q", ev, tt.event)
			}
		})
	}
}

// An operator fixes the node: the next resync's preflight makes it ready,
// with a Normal Event; an unchanged result sends no new Event.
func TestAgentPreflightRecovers(t *testing.T) {
	host := offloadHost(t)
	host.SetTCOffload("ens1f0npf0vf1", preflight.Feature{Changeable: true})
	a, clients := preflightAgent(t, host, "skip-sw")
	if a.Ready() {
		t.Fatal("ready with a representor not offloading and --tc-offload=skip-sw")
	}
	waitFor(t, "the warning", func() bool { return len(nodeEvents(t, clients)) == 1 })
	a.resyncSoon <- struct{}{} // same result: no new Event
	a.resyncSoon <- struct{}{} // (a second one: the first has run when this is taken)
	host.SetTCOffload("ens1f0npf0vf1", preflight.Feature{Active: true, Changeable: true})
	a.resyncSoon <- struct{}{}
	waitFor(t, "ready after the fix", a.Ready)
	waitFor(t, "the Normal Event", func() bool { return len(nodeEvents(t, clients)) == 2 })
	ev := nodeEvents(t, clients)
	if !strings.HasPrefix(ev[0], "Normal OffloadInHardware PF 0000:3b:00.0 (ens1f0np0): enforced in hardware") ||
		!strings.HasPrefix(ev[1], "Warning OffloadSoftwareOnly") {
		t.Errorf("Node Events %q", ev)
	}
	if got := testutil.ToFloat64(a.metrics.preflight.WithLabelValues(hPF, "hardware")); got != 1 {
		t.Errorf("preflight hardware = %v", got)
	}
}

// Without the kubelet's allocatable list, a required node stays not ready:
// nothing proves its PFs offload.
func TestAgentPreflightFailsClosed(t *testing.T) {
	a := &Agent{opts: AgentOptions{TCOffload: "skip-sw"}, preflightHost: offloadHost(t), preflightLast: map[string]string{},
		pr: &fakePodResources{down: errors.New("kubelet down")}, log: logrus.New(), logs: newLogLimiter(time.Second), metrics: newAgentMetrics(nil)}
	a.runPreflight(context.Background())
	if why := a.preflightBlocker(); !strings.Contains(why, "--tc-offload=skip-sw: the offload preflight has not run yet") || !strings.Contains(why, "kubelet down") {
		t.Errorf("blocker %q", why)
	}
}

// A PF the kubelet no longer lists loses its series; the others keep theirs.
func TestAgentPreflightForgetsGonePFs(t *testing.T) {
	a := &Agent{opts: AgentOptions{TCOffload: "auto", HostnameOverride: hNode}, preflightLast: map[string]string{}, log: logrus.New(),
		metrics: newAgentMetrics(nil), events: newEventReporter(record.NewFakeRecorder(10), func(string, string, string) types.UID { return "" }, time.Minute)}
	pf := func(name string, v preflight.Verdict) preflight.PF {
		return preflight.PF{Name: name, PCI: name, Verdict: v}
	}
	a.applyPreflight(preflight.Report{PFs: []preflight.PF{pf("0000:3b:00.0", preflight.Hardware), pf("0000:3b:00.1", preflight.SoftwareOnly)}})
	a.applyPreflight(preflight.Report{PFs: []preflight.PF{pf("0000:3b:00.0", preflight.Hardware)}})
	if n := testutil.CollectAndCount(a.metrics.preflight); n != 3 {
		t.Errorf("%d series, want the 3 verdicts of the PF still listed", n)
	}
	if got := testutil.ToFloat64(a.metrics.preflight.WithLabelValues("0000:3b:00.0", "hardware")); got != 1 {
		t.Errorf("hardware = %v", got)
	}
}

func TestPreflightMessageTruncated(t *testing.T) {
	long := strings.Repeat("x", 3000)
	if got := truncateEvent(long); len(got) != 1024 || !strings.HasSuffix(got, "(debug offload has it all)") {
		t.Errorf("len %d: %q", len(got), got[len(got)-40:])
	}
	if got := truncateEvent("short"); got != "short" {
		t.Error(got)
	}
}

func TestPreflightFlags(t *testing.T) {
	for _, tc := range []struct {
		tcOffload    string
		required     bool
		softwareFlag string
	}{
		{"auto", false, ""},
		{"", false, ""},
		{"skip-sw", true, ""},
		{"skip-hw", false, "--tc-offload=skip-hw"},
		{"never", false, ""},
	} {
		if got := offloadRequired(tc.tcOffload); got != tc.required {
			t.Errorf("offloadRequired(%q) = %v", tc.tcOffload, got)
		}
		if got := preflightOptions(tc.tcOffload, "auto"); got.SoftwareFlag != tc.softwareFlag || got.Profile != "auto" {
			t.Errorf("preflightOptions(%q) = %+v", tc.tcOffload, got)
		}
	}
}
