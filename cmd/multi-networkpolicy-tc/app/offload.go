package app

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// --tc-offload=required: the driver closes a pod's port whose filters
// expected in hardware are not all there after a change, and says so with
// a *tcdriver.NotInHardwareError. The agent reports it on the pod (Event
// OffloadRequired, errors_total{reason="OffloadRequired"}), counts the
// attachment as refused (attachments{state="refused"}), retries it with
// backoff (and at every resync) so that a fixed port takes its rules, and
// reports not ready while any attachment is refused.

// notInHardware returns the error's *tcdriver.NotInHardwareError, if any.
func notInHardware(err error) (*tcdriver.NotInHardwareError, bool) {
	var nih *tcdriver.NotInHardwareError
	ok := errors.As(err, &nih)
	return nih, ok
}

// reportOffloadRefused records the Event of a port refused for offload.
func (a *Agent) reportOffloadRefused(la *localAttachment, vf, rep, br string, nih *tcdriver.NotInHardwareError) {
	where := "representor " + rep
	if br != "" {
		where += " on bridge " + br
	}
	a.metrics.errors.WithLabelValues(reasonOffloadRequired).Inc()
	a.events.warn("Pod", la.att.PodNamespace, la.att.PodName, reasonOffloadRequired, fmt.Sprintf(
		"network %s: VF %s %s: %s; the pod sends and receives nothing (but ARP and neighbour discovery) until its filters are in hardware; retried with backoff",
		la.att.Network, vf, where, nih.Detail()))
	if a.logs.allow("offload " + la.att.ID()) {
		a.log.WithField("attachment", la.att.String()).WithField("representor", rep).Warn(
			"--tc-offload=required: the pod's filters are not all in hardware; its port is closed: " + nih.Error())
	}
}

// offloadRefused lists the local attachments refused for offload at their
// last sync, sorted.
func (a *Agent) offloadRefused() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for id, la := range a.local {
		if ps := a.programmed[id]; ps != nil && ps.state == stateRefused {
			out = append(out, la.att.String())
		}
	}
	sort.Strings(out)
	return out
}

// offloadNotReady says why the agent is not ready for offload, "" when
// nothing is refused.
func (a *Agent) offloadNotReady() string {
	refused := a.offloadRefused()
	if len(refused) == 0 {
		return ""
	}
	return fmt.Sprintf("not ready: --tc-offload=required refused %d attachments whose filters are not all in hardware (closed until they are; see their pods' OffloadRequired Events): %s",
		len(refused), strings.Join(refused, ", "))
}

// markOffloadRefused reports every port of bridge br the driver refused
// for offload (Event, errors_total) and records its attachment as refused
// at once, whichever attachment's sync applied the bridge, and queues its
// retry: a pod whose port another pod's change closed is neither left
// counted as programmed nor left refused after a fix until the next
// resync.
func (a *Agent) markOffloadRefused(br string, perPort map[string]error) {
	for rep, err := range perPort {
		nih, ok := notInHardware(err)
		if !ok {
			continue
		}
		a.mu.Lock()
		var la *localAttachment
		w := a.ports[rep]
		if w != nil {
			la = a.local[w.id]
			if ps := a.programmed[w.id]; ps != nil && la != nil {
				ps.state = stateRefused
			}
		}
		a.mu.Unlock()
		if la != nil {
			a.reportOffloadRefused(la, w.vf, rep, br, nih)
			// Its own sync retries it (with backoff), and records its
			// state once its port takes its rules.
			a.attQueue.AddRateLimited(w.id)
		}
	}
}

// warnOffloadSpelling logs once, at start, what an earlier release's
// --tc-offload spelling means now.
func warnOffloadSpelling(log logrus.FieldLogger, flag string) {
	switch flag {
	case "skip-sw":
		log.Warn("--tc-offload=skip-sw is taken as --tc-offload=required: filters are installed without skip_sw (it would let new connections, which mlx5 sends to software, pass unfiltered), in_hw is read back after every change, and a pod whose filters are not all in hardware is closed (docs/deployment.md)")
	case "skip-hw":
		log.Warn("--tc-offload=skip-hw is taken as --tc-offload=software (skip_hw on every filter)")
	}
}
