package app

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

const metricsNamespace = "multi_networkpolicy_tc"

// Reasons of the errors_total metric. Each is also the reason of the Event
// a user sees when the error is theirs to fix.
const (
	reasonInvalidInput        = "InvalidInput"
	reasonDeviceCountMismatch = "DeviceCountMismatch"
	reasonRepresentorNotFound = "RepresentorNotFound"
	reasonVFNotResolved       = "VFNotResolved"
	reasonTCProgramming       = "TCProgrammingFailed"
	reasonTCRemove            = "TCRemoveFailed"
	reasonPodResources        = "PodResourcesFailed"
	reasonNetworksAnnotation  = "InvalidNetworksAnnotation"
	reasonConntrack           = "ConntrackCutFailed"
	// reasonMACUnknown: a VF on a bridge whose MAC is missing, malformed or
	// reported differently by the PF and the pod's network-status, so its
	// ingress cannot be dispatched to.
	reasonMACUnknown = "VFMACUnknown"
	// reasonBridgeTopology: the bridge of a representor, or its ports,
	// cannot be read.
	reasonBridgeTopology = "BridgeTopologyFailed"
	// reasonNetworkNotEnforced is an Event only: a policy names a network
	// on which it enforces nothing.
	reasonNetworkNotEnforced = "NetworkNotEnforced"
	// reasonOffloadRequired: --tc-offload=required, and filters that
	// decide a pod's traffic are not in hardware: its port is closed.
	reasonOffloadRequired = "OffloadRequired"
)

// Attachment states of the attachments gauge.
const (
	statePending    = "pending"
	stateProgrammed = "programmed"
	stateFailed     = "failed"
	// stateHeld: the attachment's input is unusable; it keeps its last
	// good rules or is isolated both ways, and an Event says why.
	stateHeld = "held"
	// stateRefused: --tc-offload=required refused the attachment, its
	// filters are not all in hardware; closed, retried, and the agent is
	// not ready meanwhile.
	stateRefused = "refused"
)

var attachmentStates = []string{statePending, stateProgrammed, stateFailed, stateHeld, stateRefused}

// agentMetrics are the agent's Prometheus metrics. The TC driver exports
// its own (filters per representor, split by in_hw) on the same registry.
type agentMetrics struct {
	syncDuration     *prometheus.HistogramVec
	errors           *prometheus.CounterVec
	attachments      *prometheus.GaugeVec
	podResourcesCall *prometheus.HistogramVec
	podResourcesErrs *prometheus.CounterVec
	lastResync       prometheus.Gauge
	orphansCleaned   prometheus.Counter
	connectionsCut   prometheus.Counter
	preflight        *prometheus.GaugeVec
}

func newAgentMetrics(reg prometheus.Registerer) *agentMetrics {
	m := &agentMetrics{
		syncDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace,
			Name:      "sync_duration_seconds",
			Help:      "Time to compute and program one attachment (attachment) or to re-map every local pod from PodResources (mapping).",
			Buckets:   prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"kind", "result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "errors_total",
			Help:      "Errors by reason: InvalidInput, DeviceCountMismatch, RepresentorNotFound, VFNotResolved, TCProgrammingFailed, TCRemoveFailed, PodResourcesFailed, InvalidNetworksAnnotation, ConntrackCutFailed, VFMACUnknown, BridgeTopologyFailed, OffloadRequired.",
		}, []string{"reason"}),
		attachments: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: metricsNamespace,
			Name:      "attachments",
			Help:      "Local pod attachments on enforced networks by state: pending (not programmed yet), programmed, failed (last attempt failed; retried), held (input unusable: last good rules kept, or isolated both ways), refused (--tc-offload=required: filters not all in hardware, closed, retried).",
		}, []string{"state"}),
		podResourcesCall: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace,
			Name:      "podresources_call_duration_seconds",
			Help:      "Latency of kubelet PodResources calls, retries included.",
			Buckets:   prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"method"}),
		podResourcesErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "podresources_errors_total",
			Help:      "Failed kubelet PodResources calls.",
		}, []string{"method"}),
		lastResync: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace,
			Name:      "last_resync_timestamp_seconds",
			Help:      "When the last full resync (PodResources and kernel state) finished.",
		}),
		orphansCleaned: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "orphans_cleaned_total",
			Help:      "Representors of VFs no pod holds that had rules of ours other than a free VF's, set back to a free VF's by the resync.",
		}),
		connectionsCut: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace,
			Name:      "connections_cut_total",
			Help:      "Conntrack entries of established connections removed because a changed rule set denies them.",
		}),
		preflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: metricsNamespace,
			Name:      "preflight",
			Help:      "Offload preflight per PF whose VFs the kubelet can allocate (pf: PCI address): 1 for its current verdict (hardware, software-only, cannot-enforce), 0 for the others. Run at start and after every resync; `debug offload` says why.",
		}, []string{"pf", "verdict"}),
	}
	for _, s := range attachmentStates {
		m.attachments.WithLabelValues(s).Set(0)
	}
	if reg != nil {
		reg.MustRegister(m.syncDuration, m.errors, m.attachments, m.podResourcesCall, m.podResourcesErrs, m.lastResync, m.orphansCleaned, m.connectionsCut, m.preflight)
	}
	return m
}

// newRegistry returns a registry with the process and Go collectors, as
// the default one has, without the global state.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector(), newBuildInfoGauge())
	return reg
}

// instrumentedPodResources measures the calls of the PodResources client.
type instrumentedPodResources struct {
	next    PodResources
	metrics *agentMetrics
}

func (p instrumentedPodResources) observe(method string, start time.Time, err error) {
	p.metrics.podResourcesCall.WithLabelValues(method).Observe(time.Since(start).Seconds())
	if err != nil {
		p.metrics.podResourcesErrs.WithLabelValues(method).Inc()
	}
}

func (p instrumentedPodResources) List(ctx context.Context) ([]*podresourcesv1.PodResources, error) {
	start := time.Now()
	res, err := p.next.List(ctx)
	p.observe("List", start, err)
	return res, err
}

func (p instrumentedPodResources) Get(ctx context.Context, namespace, name string) (*podresourcesv1.PodResources, error) {
	start := time.Now()
	res, err := p.next.Get(ctx, namespace, name)
	p.observe("Get", start, err)
	return res, err
}

func (p instrumentedPodResources) GetAllocatableResources(ctx context.Context) (*podresourcesv1.AllocatableResourcesResponse, error) {
	start := time.Now()
	res, err := p.next.GetAllocatableResources(ctx)
	p.observe("GetAllocatableResources", start, err)
	return res, err
}
