package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	mnpfake "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/client/clientset/versioned/fake"
	nadfake "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/client/clientset/versioned/fake"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// TestKlogLinesComeOutInTheChosenFormat: client-go's klog lines go through
// logrus, with their key/values as fields; V(n>0) lines only at debug.
func TestKlogLinesComeOutInTheChosenFormat(t *testing.T) {
	var buf bytes.Buffer
	log := logrus.New()
	log.SetOutput(&buf)
	log.SetFormatter(&logrus.JSONFormatter{})
	// klog.SetLogger (routeKlog) is process-wide and must precede any
	// logging; here the sink is used as klog uses it, through logr.
	klogr := logr.New(&logrusSink{log: log})
	klogr.Error(errors.New("connection refused"), "Failed to watch", "reflector", "pods")
	klogr.V(4).Info("chatty")
	var lines []map[string]any
	dec := json.NewDecoder(&buf)
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("not JSON: %v: %s", err, buf.String())
		}
		lines = append(lines, m)
	}
	if len(lines) != 1 {
		t.Fatalf("%d lines, want 1 (the V(4) line is debug): %v", len(lines), lines)
	}
	if l := lines[0]; l["msg"] != "Failed to watch" || l["level"] != "error" || l["error"] != "connection refused" || l["reflector"] != "pods" {
		t.Errorf("line %v", l)
	}
}

// TestUnreachableAPIServerIsLogged: while the caches cannot sync, the agent
// says why, and does not turn ready.
func TestUnreachableAPIServerIsLogged(t *testing.T) {
	clients, err := ClientsForConfig(&rest.Config{Host: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	expectWarningBeforeReady(t, clients, &fakePodResources{}, 20*time.Second, "API server unreachable")
}

// TestKubeletDownIsLogged: with no PodResources socket, the agent says so
// at its first start-up attempt (bounded by initialMappingDeadline) and
// does not turn ready.
func TestKubeletDownIsLogged(t *testing.T) {
	pr, err := podresources.New(filepath.Join(t.TempDir(), "kubelet.sock"), podresources.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pr.Close() }()
	clients := &Clients{Kube: kubefake.NewClientset(), MNP: mnpfake.NewSimpleClientset(), NAD: nadfake.NewSimpleClientset()}
	expectWarningBeforeReady(t, clients, pr, 3*initialMappingDeadline, "kubelet PodResources")
}

// expectWarningBeforeReady runs an agent on clients and pr and fails t
// unless, within, it logs a warning containing msg, with the error, while
// not ready.
func expectWarningBeforeReady(t *testing.T, clients *Clients, pr PodResources, within time.Duration, msg string) {
	t.Helper()
	log, hook := logtest.NewNullLogger()
	opts := *NewAgentOptions()
	opts.HostnameOverride = "node-a"
	opts.MetricsBindAddress, opts.HealthProbeBindAddress = "0", "0"
	agent, err := NewAgent(AgentConfig{Options: opts, Clients: clients, PodResources: pr, Resolver: sriov.NewFake(),
		Driver: tcdriver.NewFake(tcdriver.Options{}), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	}()
	deadline := time.Now().Add(within)
	for {
		for _, e := range hook.AllEntries() {
			if e.Level == logrus.WarnLevel && strings.Contains(e.Message, msg) && e.Data[logrus.ErrorKey] != nil {
				if agent.Ready() {
					t.Errorf("ready while warning %q", msg)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no warning %q; log: %v", msg, hook.AllEntries())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
