package tcdriver

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
)

// Metrics exports how many of the driver's filters are offloaded.
type Metrics struct {
	filters, notInHW *prometheus.GaugeVec
}

// NewMetrics registers the driver's metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		filters: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "multi_networkpolicy_tc",
			Name:      "filters",
			Help:      "TC filters installed by the driver per representor and hook, split by whether the kernel reports them offloaded (in_hw).",
		}, []string{"representor", "hook", "in_hw"}),
		notInHW: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "multi_networkpolicy_tc",
			Name:      "filters_not_in_hardware",
			Help:      "Filters of a device not in hardware as the placement expects (one copy for a filter the offload profile puts in hardware, none for one it keeps in software), per reason: \"" + reasonNotOffloaded + "\" for filters expected in hardware that the kernel reports not offloaded (in_hw_count 0; always exported), \"" + reasonUnexpectedInHW + "\" and \"" + reasonExtraCopies + "\" for the other way round, or why the profile (or --tc-offload=software) keeps a filter in software.",
		}, []string{"representor", "reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.filters, m.notInHW)
	}
	return m
}

func (m *Metrics) setNotInHW(dev string, reasons map[string]int) {
	m.notInHW.DeletePartialMatch(prometheus.Labels{"representor": dev})
	for why, n := range reasons {
		m.notInHW.WithLabelValues(dev, why).Set(float64(n))
	}
}

func (m *Metrics) set(dev string, h Hook, inHW, total int) {
	m.filters.WithLabelValues(dev, h.String(), "true").Set(float64(inHW))
	m.filters.WithLabelValues(dev, h.String(), "false").Set(float64(total - inHW))
}

func (m *Metrics) forget(dev string) {
	m.filters.DeletePartialMatch(prometheus.Labels{"representor": dev})
	m.notInHW.DeletePartialMatch(prometheus.Labels{"representor": dev})
}

// Collector returns the gauge, for tests and custom registries.
func (m *Metrics) Collector() prometheus.Collector { return m.filters }

// RuleSetSource tells the counters collector which rule set each
// representor enforces; the driver's Applied does.
type RuleSetSource interface {
	Applied() map[string]*policy.RuleSet
}

// CountersCollector exports the packet counters of our filters per
// attachment and per policy rule. It reads them at scrape time with one
// dump per representor, through its own Driver (its own netlink socket, so
// a scrape never waits for or races with programming). Labels, and why
// their number is bounded (docs/troubleshooting.md#metrics): a series per
// local attachment and direction (namespace, pod, network, direction,
// verdict), and one per rule of an isolated direction (plus rule, the
// policy rules it came from, e.g. "blue/allow-from-red ingress[0]"). Both
// are bounded by this node's pods and the policies selecting them. The
// values are the kernel's counters: they restart from zero when a rule's
// filters are replaced, which Prometheus' rate() treats as a reset.
type CountersCollector struct {
	source RuleSetSource
	dumper Driver
	opts   Options
	log    logrus.FieldLogger

	packets, rulePackets *prometheus.Desc
}

// NewCountersCollector returns the collector; dumper reads the kernel.
func NewCountersCollector(source RuleSetSource, dumper Driver, opts Options, log logrus.FieldLogger) *CountersCollector {
	if log == nil {
		log = logrus.StandardLogger()
	}
	labels := []string{"namespace", "pod", "network", "direction"}
	return &CountersCollector{source: source, dumper: dumper, opts: opts, log: log,
		packets: prometheus.NewDesc("multi_networkpolicy_tc_packets_total",
			"Packets our filters decided per attachment and direction: verdict allowed counts the first packets of new connections a rule or --accept-icmp allowed; dropped counts every packet dropped.",
			append(labels, "verdict"), nil),
		rulePackets: prometheus.NewDesc("multi_networkpolicy_tc_rule_packets_total",
			"First packets of new connections allowed by each rule of an isolated direction; rule names the policy rules it came from, or accept-icmp.",
			append(labels, "rule"), nil),
	}
}

// Describe implements prometheus.Collector.
func (c *CountersCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.rulePackets
}

// BridgeSource tells the counters collector the bridges the driver
// enforces (the driver's Bridges does); their attachments' counters come
// from every port of their bridge.
type BridgeSource interface {
	Bridges() []*Bridge
}

// Collect implements prometheus.Collector.
func (c *CountersCollector) Collect(ch chan<- prometheus.Metric) {
	dump := func(dev string) *State {
		st, err := c.dumper.Dump(context.Background(), dev)
		if err != nil {
			if !errors.Is(err, ErrNoDevice) {
				c.log.WithError(err).WithField("representor", dev).Warn("reading filter counters")
			}
			return nil
		}
		return st
	}
	onBridge := map[string]bool{}
	if bs, ok := c.source.(BridgeSource); ok {
		for _, b := range bs.Bridges() {
			states := map[string]*State{}
			for _, dev := range portOrder(b) {
				states[dev] = dump(dev)
				onBridge[dev] = true
			}
			for _, pt := range b.Ports {
				c.collect(ch, pt.RuleSet, func(d policy.Direction) (Counters, bool) {
					return BridgeCounters(states, b, pt.Dev, d, c.opts)
				})
			}
		}
	}
	for dev, rs := range c.source.Applied() {
		if onBridge[dev] {
			continue
		}
		st := dump(dev)
		if st == nil {
			continue
		}
		c.collect(ch, rs, func(d policy.Direction) (Counters, bool) {
			return CountersOf(st, HookFor(d), rs.Direction(d), c.opts)
		})
	}
}

// collect exports one attachment's counters, per direction.
func (c *CountersCollector) collect(ch chan<- prometheus.Metric, rs *policy.RuleSet, counters func(policy.Direction) (Counters, bool)) {
	att := rs.Attachment
	for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
		dr := rs.Direction(d)
		cnt, ok := counters(d)
		if !ok {
			continue
		}
		labels := []string{att.PodNamespace, att.PodName, att.Network.String(), d.String()}
		with := func(v string) []string { return append(slices.Clip(labels), v) }
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(cnt.Allowed()), with("allowed")...)
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(cnt.Dropped), with("dropped")...)
		if !dr.Isolated {
			continue
		}
		// Rules with the same origins share a series.
		byRule := map[string]uint64{}
		for i, n := range cnt.Rules {
			byRule[strings.Join(dr.Rules[i].Origins, "; ")] += n
		}
		if dr.AcceptICMP || dr.AcceptICMPv6 {
			byRule["accept-icmp"] += cnt.ICMP
		}
		for rule, n := range byRule {
			ch <- prometheus.MustNewConstMetric(c.rulePackets, prometheus.CounterValue, float64(n), with(rule)...)
		}
	}
}
