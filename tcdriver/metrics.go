package tcdriver

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics exports how many of the driver's filters are offloaded.
type Metrics struct {
	filters *prometheus.GaugeVec
}

// NewMetrics registers the driver's metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{filters: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "multi_networkpolicy_tc",
		Name:      "filters",
		Help:      "TC filters installed by the driver per representor and hook, split by whether the kernel reports them offloaded (in_hw).",
	}, []string{"representor", "hook", "in_hw"})}
	if reg != nil {
		reg.MustRegister(m.filters)
	}
	return m
}

func (m *Metrics) set(dev string, h Hook, inHW, total int) {
	m.filters.WithLabelValues(dev, h.String(), "true").Set(float64(inHW))
	m.filters.WithLabelValues(dev, h.String(), "false").Set(float64(total - inHW))
}

func (m *Metrics) forget(dev string) {
	m.filters.DeletePartialMatch(prometheus.Labels{"representor": dev})
}

// Collector returns the gauge, for tests and custom registries.
func (m *Metrics) Collector() prometheus.Collector { return m.filters }
