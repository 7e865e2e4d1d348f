package app

import (
	"context"
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/preflight"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// Event reasons of the offload preflight, one per verdict; the Event is on
// the Node.
const (
	reasonOffloadInHardware    = "OffloadInHardware"
	reasonOffloadSoftwareOnly  = "OffloadSoftwareOnly"
	reasonOffloadCannotEnforce = "OffloadCannotEnforce"
)

// offloadRequired tells whether --tc-offload (required, or its old
// spelling skip-sw) asks for every filter in hardware.
func offloadRequired(flag string) bool {
	o, err := tcdriver.ParseOffload(flag)
	return err == nil && o == tcdriver.OffloadRequired
}

// runPreflight runs the offload preflight over the PFs whose VFs the
// kubelet can allocate, and reports it: a metric per PF always, a log line
// and an Event on the Node when a PF's result changed (the first run
// included), and, with --tc-offload=required, not ready while a PF is not
// enforced in hardware. It runs at start and after every resync, so that
// a node an operator fixed (ethtool -K …) becomes ready without a restart.
func (a *Agent) runPreflight(ctx context.Context) {
	if a.preflightHost == nil {
		return
	}
	actx, cancel := context.WithTimeout(ctx, podResourcesDeadline)
	ids, err := allocatableIDs(actx, a.pr)
	cancel()
	if err != nil {
		if a.logs.allow("preflight") {
			a.log.WithError(err).Warn("offload preflight: cannot list the node's allocatable VFs; keeping the last result")
		}
		a.mu.Lock()
		if !a.preflightRan && offloadRequired(a.opts.TCOffload) {
			a.preflightBlock = fmt.Sprintf("--tc-offload=%s: the offload preflight has not run yet (%v)", a.opts.TCOffload, err)
		}
		a.mu.Unlock()
		return
	}
	pfs, _ := preflight.PFsOfVFs(a.preflightHost, ids)
	a.applyPreflight(preflight.Inspect(ctx, a.preflightHost, pfs, preflightOptions(a.opts.TCOffload, a.opts.OffloadProfile)))
}

// applyPreflight reports a preflight result.
func (a *Agent) applyPreflight(r preflight.Report) {
	block := ""
	required := offloadRequired(a.opts.TCOffload)
	seen := map[string]bool{}
	for _, pf := range r.PFs {
		label := pf.Label()
		seen[label] = true
		for _, v := range preflight.Verdicts {
			val := 0.0
			if v == pf.Verdict {
				val = 1
			}
			a.metrics.preflight.WithLabelValues(label, v.Label()).Set(val)
		}
		msg := preflightMessage(pf)
		if required && pf.Verdict != preflight.Hardware && block == "" {
			block = fmt.Sprintf("--tc-offload=%s but %s", a.opts.TCOffload, msg)
		}
		a.mu.Lock()
		changed := a.preflightLast[label] != msg
		a.preflightLast[label] = msg
		a.mu.Unlock()
		if !changed {
			continue
		}
		fields := logrus.Fields{"pf": label, "uplink": pf.Uplink.Netdev, "verdict": pf.Verdict, "kernel": r.Kernel, "profile": r.Profile}
		if fixes := pf.Fixes(); len(fixes) > 0 {
			fields["fixes"] = strings.Join(fixes, "; ")
		}
		eventType, reason := corev1.EventTypeWarning, reasonOffloadSoftwareOnly
		switch pf.Verdict {
		case preflight.Hardware:
			eventType, reason = corev1.EventTypeNormal, reasonOffloadInHardware
			a.log.WithFields(fields).Info("offload preflight: " + msg)
		case preflight.CannotEnforce:
			reason = reasonOffloadCannotEnforce
			a.log.WithFields(fields).Warn("offload preflight: " + msg)
		default:
			a.log.WithFields(fields).Warn("offload preflight: " + msg)
		}
		a.events.event(eventType, "Node", "", a.opts.HostnameOverride, reason, truncateEvent(msg))
	}
	a.mu.Lock()
	for label := range a.preflightLast {
		if !seen[label] { // a PF no longer listed: its series go
			delete(a.preflightLast, label)
			a.metrics.preflight.DeletePartialMatch(prometheus.Labels{"pf": label})
		}
	}
	a.preflightRan = true
	a.preflightBlock = block
	a.mu.Unlock()
}

// preflightMessage is one PF's result in a line: verdict, then each
// problem with its fix.
func preflightMessage(pf preflight.PF) string {
	name := pf.Label()
	if pf.Uplink.Netdev != "" && pf.Uplink.Netdev != name {
		name += " (" + pf.Uplink.Netdev + ")"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "PF %s: %s", name, pf.Verdict)
	for i, p := range pf.Problems {
		sep := "; "
		if i == 0 {
			sep = ": "
		}
		b.WriteString(sep + p.Reason)
		if p.Fix != "" {
			b.WriteString(" (fix: " + p.Fix + ")")
		}
	}
	return b.String()
}

// truncateEvent keeps an Event message within what kubectl shows whole.
func truncateEvent(msg string) string {
	const maxEvent = 1024
	if len(msg) <= maxEvent {
		return msg
	}
	return msg[:maxEvent-len(" … (debug offload has it all)")] + " … (debug offload has it all)"
}

// preflightBlocker is why the preflight keeps the agent not ready, "" when
// it does not.
func (a *Agent) preflightBlocker() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.preflightBlock
}
