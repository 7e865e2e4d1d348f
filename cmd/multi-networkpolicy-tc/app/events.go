package app

import (
	"errors"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

const eventComponent = "multi-networkpolicy-tc"

// eventReporter turns errors a user can act on into Kubernetes Events on the
// object at fault. A rule set is recomputed on every change of anything it
// depends on, so the same error comes back many times: it is reported once
// per interval (the resync period), which keeps the API server and the
// object's event list quiet while a problem that persists is still visible.
type eventReporter struct {
	recorder record.EventRecorder
	uid      func(kind, namespace, name string) types.UID
	interval time.Duration
	now      func() time.Time

	mu   sync.Mutex
	sent map[eventKey]time.Time
}

type eventKey struct {
	kind, namespace, name, reason, message string
}

func newEventReporter(recorder record.EventRecorder, uid func(kind, namespace, name string) types.UID, interval time.Duration) *eventReporter {
	return &eventReporter{recorder: recorder, uid: uid, interval: interval, now: time.Now, sent: map[eventKey]time.Time{}}
}

// warn records a Warning Event on the object, unless the same one was
// recorded less than an interval ago.
func (r *eventReporter) warn(kind, namespace, name, reason, message string) {
	r.event(corev1.EventTypeWarning, kind, namespace, name, reason, message)
}

// event records an Event of that type (Normal, Warning) on the object,
// unless the same one was recorded less than an interval ago.
func (r *eventReporter) event(eventType, kind, namespace, name, reason, message string) {
	k := eventKey{kind, namespace, name, reason, message}
	now := r.now()
	r.mu.Lock()
	last, seen := r.sent[k]
	if seen && now.Sub(last) < r.interval {
		r.mu.Unlock()
		return
	}
	r.sent[k] = now
	if len(r.sent) > 10000 { // forget old entries rather than grow without bound
		for k, t := range r.sent {
			if now.Sub(t) >= r.interval {
				delete(r.sent, k)
			}
		}
	}
	r.mu.Unlock()
	ref := &corev1.ObjectReference{
		Kind:      kind,
		Namespace: namespace,
		Name:      name,
		UID:       r.uid(kind, namespace, name),
	}
	switch kind {
	case "MultiNetworkPolicy", "NetworkAttachmentDefinition":
		ref.APIVersion = "k8s.cni.cncf.io/v1beta1"
		if kind == "NetworkAttachmentDefinition" {
			ref.APIVersion = "k8s.cni.cncf.io/v1"
		}
	default:
		ref.APIVersion = "v1"
	}
	r.recorder.Event(ref, eventType, reason, message)
}

// inputErrors splits the error of policy.Engine.Compute into its
// *policy.InputError parts (each names one object), and the rest.
func inputErrors(err error) (inputs []*policy.InputError, other []error) {
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if ie, ok := err.(*policy.InputError); ok { //nolint:errorlint // the join's own members, not a chain
			inputs = append(inputs, ie)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok { //nolint:errorlint // walking the join
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var ie *policy.InputError
		if errors.As(err, &ie) {
			inputs = append(inputs, ie)
			return
		}
		other = append(other, err)
	}
	walk(err)
	return inputs, other
}
