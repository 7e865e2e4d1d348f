package app

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
)

// Drop-in compatibility: every flag that the DaemonSets of upstream
// multi-networkpolicy-iptables and multi-networkpolicy-tc pass (their own
// flags and klog's, which both register) is accepted, so that swapping the
// image of an existing DaemonSet never ends in "unknown flag". A flag with a
// meaning here is mapped onto ours; the others are accepted, hidden from
// --help, and logged once as ignored, naming what to use instead.
// docs/deployment.md#drop-in-for-upstream-daemonsets lists them; TestUpstreamDaemonSetArguments
// runs the binary with both DaemonSets' argument lists.

// legacyFlag is a flag accepted for compatibility and then ignored.
type legacyFlag struct {
	name string
	kind legacyKind
	// instead says why the flag has no effect here and what replaces it.
	instead string
}

type legacyKind uint8

const (
	legacyString legacyKind = iota
	legacyBool
)

const (
	insteadLogging = "logs always go to stderr, unbuffered; use --log-format and --log-level"
	insteadRuntime = "pods' VFs come from the kubelet's PodResources API (--podresources-socket), not the container runtime"
	insteadCustom  = "iptables rules cannot be applied to TC filters; express them as MultiNetworkPolicy ipBlock rules (ICMP errors of allowed connections always pass)"
	insteadIPv6    = "IPv6 neighbour discovery always passes; allow other IPv6 prefixes with a MultiNetworkPolicy ipBlock"
)

var legacyFlags = []legacyFlag{
	// multi-networkpolicy-iptables.
	{"container-runtime", legacyString, insteadRuntime},
	{"container-runtime-endpoint", legacyString, insteadRuntime},
	{"allow-ipv6-src-prefix", legacyString, insteadIPv6},
	{"allow-ipv6-dst-prefix", legacyString, insteadIPv6},
	{"custom-v4-ingress-rule-file", legacyString, insteadCustom},
	{"custom-v4-egress-rule-file", legacyString, insteadCustom},
	{"custom-v6-ingress-rule-file", legacyString, insteadCustom},
	{"custom-v6-egress-rule-file", legacyString, insteadCustom},
	{"log-flush-frequency", legacyString, insteadLogging},
	// klog (v1 and v2), registered by both upstream agents; --v is mapped.
	{"logtostderr", legacyBool, insteadLogging},
	{"alsologtostderr", legacyBool, insteadLogging},
	{"alsologtostderrthreshold", legacyString, insteadLogging},
	{"stderrthreshold", legacyString, insteadLogging},
	{"legacy_stderr_threshold_behavior", legacyBool, insteadLogging},
	{"log_dir", legacyString, insteadLogging},
	{"log_file", legacyString, insteadLogging},
	{"log_file_max_size", legacyString, insteadLogging},
	{"add_dir_header", legacyBool, insteadLogging},
	{"skip_headers", legacyBool, insteadLogging},
	{"skip_log_headers", legacyBool, insteadLogging},
	{"one_output", legacyBool, insteadLogging},
	{"vmodule", legacyString, insteadLogging},
	{"log_backtrace_at", legacyString, insteadLogging},
}

// compatFlags holds the values of the mapped upstream flags until they are
// folded into the agent's options.
type compatFlags struct {
	syncPeriodSeconds int
	podIPTables       string
	hostPrefix        string
}

// addCompatFlags registers the agent's upstream flags on fs, hidden from
// --help. (klog's --v is registered with --log-level, for every command.)
func addCompatFlags(fs *pflag.FlagSet, c *compatFlags) {
	hidden := func(name string) { _ = fs.MarkHidden(name) }
	fs.IntVar(&c.syncPeriodSeconds, "sync-period", 0, "multi-networkpolicy-iptables' resync period in seconds; same as --resync-period")
	hidden("sync-period")
	fs.StringVar(&c.podIPTables, "pod-iptables", "", "multi-networkpolicy-iptables' rule dump directory; same as --pod-rules-path")
	hidden("pod-iptables")
	fs.StringVar(&c.hostPrefix, "host-prefix", "", "multi-networkpolicy-iptables' host file system mount; the PodResources socket is looked for under it")
	hidden("host-prefix")
	for _, l := range legacyFlags {
		switch l.kind {
		case legacyBool:
			fs.Bool(l.name, false, "ignored: "+l.instead)
		default:
			fs.String(l.name, "", "ignored: "+l.instead)
		}
		hidden(l.name)
	}
}

// applyCompatFlags folds the mapped upstream flags into o and logs one line
// for each upstream flag that was set. Our own spelling wins when both are.
func applyCompatFlags(fs *pflag.FlagSet, c *compatFlags, o *AgentOptions, log logrus.FieldLogger) error {
	if fs.Changed("sync-period") && c.syncPeriodSeconds < 1 {
		return fmt.Errorf("--sync-period=%d: must be at least 1 (seconds)", c.syncPeriodSeconds)
	}
	// mapOnto reads upstream flag as ours; set stores it and returns the
	// value it gave ours.
	mapOnto := func(upstream, ours string, set func() string) {
		switch {
		case !fs.Changed(upstream):
		case fs.Changed(ours):
			log.Warnf("flag --%s is ignored: --%s=%s is set", upstream, ours, fs.Lookup(ours).Value)
		default:
			log.Warnf("flag --%s=%s is deprecated: read as --%s=%s", upstream, fs.Lookup(upstream).Value, ours, set())
		}
	}
	mapOnto("sync-period", "resync-period", func() string {
		o.ResyncPeriod = time.Duration(c.syncPeriodSeconds) * time.Second
		return o.ResyncPeriod.String()
	})
	mapOnto("pod-iptables", "pod-rules-path", func() string {
		o.PodRulesPath = c.podIPTables
		return o.PodRulesPath
	})
	// multi-networkpolicy-iptables' DaemonSet mounts the host's / at
	// --host-prefix and nothing else of ours: the kubelet's socket is there.
	mapOnto("host-prefix", "podresources-socket", func() string {
		o.PodResourcesSocket = filepath.Join(c.hostPrefix, podresources.DefaultSocket)
		return o.PodResourcesSocket
	})
	for _, l := range legacyFlags {
		if fs.Changed(l.name) {
			log.Warnf("flag --%s is ignored: %s", l.name, l.instead)
		}
	}
	return nil
}

// parseLogLevel reads a logrus level name or a klog verbosity (-v=N), so
// that upstream DaemonSets' -v=4 keeps working. klog's conventions: 0-3 are
// operator-level information, 4 is debug, 5 and more trace.
func parseLogLevel(s string) (logrus.Level, error) {
	if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil {
		switch {
		case n < 0:
			return 0, fmt.Errorf("%q: a klog verbosity is 0 or more", s)
		case n <= 3:
			return logrus.InfoLevel, nil
		case n == 4:
			return logrus.DebugLevel, nil
		default:
			return logrus.TraceLevel, nil
		}
	}
	lvl, err := logrus.ParseLevel(s)
	if err != nil {
		return 0, fmt.Errorf("%q: want panic, fatal, error, warn, info, debug, trace or a klog verbosity 0-9", s)
	}
	return lvl, nil
}
