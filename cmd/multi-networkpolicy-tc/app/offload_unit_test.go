package app

import (
	"os"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// metricValue reads one series of the agent's registry (-1: absent).
func metricValue(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return -1
}

const notOffloaded = "not offloaded by the device"

// TestOffloadModesAgent: the agent over a driver whose ports are switchdev
// ports offloading what the mlx5-6.3 profile matches, except B's (VF 1)
// where plain: with --tc-offload=required a pod whose filters are not all
// in hardware is refused (closed, Warning Event OffloadRequired naming the
// representor, errors_total, attachments{state="refused"}, not ready) and
// the others keep their rules; once the port offloads, B takes its rules
// and the agent is ready. auto programs every pod and reports what is not
// in hardware; software installs every filter skip_hw.
func TestOffloadModesAgent(t *testing.T) {
	prof := tcdriver.ProfileMLX563
	for _, c := range []struct {
		mode  tcdriver.Offload
		plain bool // B's representor offloads nothing
		alone bool // the representors are on no bridge (programmed alone)
	}{
		{tcdriver.OffloadRequired, false, false},
		{tcdriver.OffloadRequired, true, false},
		{tcdriver.OffloadRequired, true, true},
		{tcdriver.OffloadAuto, true, false},
		{tcdriver.OffloadSoftware, false, false},
	} {
		name := string(c.mode)
		if c.plain {
			name += " with B's port not offloading"
		}
		if c.alone {
			name += ", on no bridge"
		}
		t.Run(name, func(t *testing.T) {
			h := setupABCWith(t, tcdriver.Options{Offload: c.mode, Profile: prof}, func(h *harness) {
				h.tc.SetMetrics(tcdriver.NewMetrics(h.agent.Registry()))
				for _, d := range h.tc.Devices() {
					if !c.plain || d != hRep(1) {
						h.tc.SetOffload(d, prof)
					}
				}
				if c.alone {
					for i := range hVFs {
						h.sw.SetMaster(hRep(i), "")
					}
				}
			})
			refused := c.mode == tcdriver.OffloadRequired && c.plain
			// A new connection B's policy allows, from outside.
			outside := func() tcdriver.Verdict {
				if h.allowed(hRep(1), podB)["in 192.0.2.7:80"] {
					return tcdriver.Pass
				}
				return tcdriver.Drop
			}
			if refused {
				h.eventually("B refused", func() bool { return h.stateOf(fcNS+"/b/"+fcNet) == stateRefused })
				h.warning("Pod", "b", "not in hardware", hRep(1), "--tc-offload=required", "fix:")
				events, err := h.clients.Kube.CoreV1().Events(fcNS).List(hctx(), metav1.ListOptions{})
				h.must(err, "events")
				for _, e := range events.Items {
					if strings.Contains(e.Message, "not in hardware") && (e.Reason != reasonOffloadRequired || e.InvolvedObject.Name != "b") {
						t.Errorf("Event %s on %s: %s", e.Reason, e.InvolvedObject.Name, e.Message)
					}
				}
				// Closed (B's rules ran in software between the change and
				// the read back; its retries keep it closed until its
				// device takes the closed filters).
				h.eventually("B closed", func() bool { return outside() == tcdriver.Drop })
				h.settle()
				if got := outside(); got != tcdriver.Drop {
					t.Errorf("B refused, yet a retry let an allowed connection to it pass: %s", got)
				}
				if h.agent.Ready() {
					t.Error("ready while B is refused")
				}
				if msg := h.agent.offloadNotReady(); !strings.Contains(msg, "shop/b") || strings.Contains(msg, "shop/a") {
					t.Errorf("readiness message %q", msg)
				}
				if n := testutil.ToFloat64(h.agent.metrics.errors.WithLabelValues(reasonOffloadRequired)); n == 0 {
					t.Error("errors_total{reason=OffloadRequired} is 0")
				}
				if n := testutil.ToFloat64(h.agent.metrics.attachments.WithLabelValues(stateRefused)); n != 1 {
					t.Errorf("attachments{state=refused} = %v, want 1", n)
				}
				for _, id := range []string{fcNS + "/a/" + fcNet, fcNS + "/c/" + fcNet} {
					h.eventually(id+" programmed", func() bool { return h.stateOf(id) == stateProgrammed })
				}
				if got := h.allowed(hRep(0), podA); !got["out 192.0.2.7:443"] {
					t.Errorf("A (not refused) lost its traffic: %v", got)
				}
				// The operator fixes B's port: its retry takes.
				h.tc.SetOffload(hRep(1), prof)
			}
			h.eventually("B programmed", func() bool { return h.stateOf(fcNS+"/b/"+fcNet) == stateProgrammed })
			h.eventually("ready", h.agent.Ready)
			h.settle()
			if got := outside(); got != tcdriver.Pass {
				t.Errorf("allowed connection to B: %s", got)
			}
			missing := metricValue(t, h.agent.Registry(), "multi_networkpolicy_tc_filters_not_in_hardware",
				map[string]string{"representor": hRep(1), "reason": notOffloaded})
			if wantMissing := c.mode == tcdriver.OffloadAuto && c.plain; (missing > 0) != wantMissing {
				t.Errorf("filters_not_in_hardware{%s, %q} = %v, want >0: %v", hRep(1), notOffloaded, missing, wantMissing)
			}
			if c.mode == tcdriver.OffloadSoftware {
				for _, d := range h.tc.Devices() {
					for _, f := range h.tc.Filters(d, tcdriver.HookIngress) {
						if !strings.Contains(f.String(), "skip_hw") || f.InHW {
							t.Fatalf("software: %s %s", d, f)
						}
					}
				}
			}
		})
	}
}

// TestOffloadRequiredUplinkAgent: an uplink that offloads nothing carries
// filters every pod on the bridge depends on: with --tc-offload=required
// every pod is refused (whichever pod's sync applied the bridge, each is
// reported and counted refused) until the uplink is fixed, and then every
// pod takes its rules and the agent is ready.
func TestOffloadRequiredUplinkAgent(t *testing.T) {
	prof := tcdriver.ProfileMLX563
	h := setupABCWith(t, tcdriver.Options{Offload: tcdriver.OffloadRequired, Profile: prof}, func(h *harness) {
		for _, d := range h.tc.Devices() {
			if d != hUplink {
				h.tc.SetOffload(d, prof)
			}
		}
	})
	ids := []string{fcNS + "/a/" + fcNet, fcNS + "/b/" + fcNet, fcNS + "/c/" + fcNet}
	for _, id := range ids {
		h.eventually(id+" refused", func() bool { return h.stateOf(id) == stateRefused })
	}
	for _, pod := range []string{"a", "b", "c"} {
		h.warning("Pod", pod, "not in hardware", hUplink)
	}
	if msg := h.agent.offloadNotReady(); !strings.Contains(msg, "refused 3 attachments") {
		t.Errorf("readiness message %q", msg)
	}
	h.tc.SetOffload(hUplink, prof)
	for _, id := range ids {
		h.eventually(id+" programmed after the fix", func() bool { return h.stateOf(id) == stateProgrammed })
	}
	h.eventually("ready", h.agent.Ready)
	h.settle()
	if got := h.synTo(hUplink, "192.0.2.7", 1, podB, 80); got != tcdriver.Pass {
		t.Errorf("allowed connection to B after the fix: %s", got)
	}
}

// stateOf is an attachment's state ("" when unknown).
func (h *harness) stateOf(id string) string {
	for _, st := range h.agent.Attachments() {
		if st.ID == id {
			return st.State
		}
	}
	return ""
}

// TestDaemonSetOffloadIsTheDefault: the DaemonSet spells out the flag's
// default --tc-offload, the production choice docs/deployment.md explains,
// so the two cannot drift apart.
func TestDaemonSetOffloadIsTheDefault(t *testing.T) {
	data, err := os.ReadFile("../../../deploy/agent/deploy.yml")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "- --tc-offload="); ok {
			got = append(got, v)
		}
	}
	def := NewAgentOptions().TCOffload
	if len(got) != 1 || got[0] != def {
		t.Fatalf("deploy.yml --tc-offload %v, want it once, the flag's default %q", got, def)
	}
	if mode, err := tcdriver.ParseOffload(got[0]); err != nil || mode != tcdriver.OffloadAuto {
		t.Fatalf("deploy.yml --tc-offload=%s: %v, %v; docs/deployment.md chooses auto", got[0], mode, err)
	}
}
