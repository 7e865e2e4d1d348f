package app

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// Defaults of the agent's flags. The ports sit next to each other and out
// of the ranges Kubernetes components use (10248-10260) and of
// multi-networkpolicy-iptables' (none): 9310 metrics, 9311 probes.
const (
	DefaultMetricsBindAddress     = "127.0.0.1:9310"
	DefaultHealthProbeBindAddress = ":9311"
	DefaultResyncPeriod           = 5 * time.Minute
)

// AgentOptions are the agent's command-line settings. The first group keeps
// the names and meaning of multi-networkpolicy-iptables' flags so the agent
// can be swapped into an existing DaemonSet.
type AgentOptions struct {
	Kubeconfig       string
	Master           string
	HostnameOverride string
	NetworkPlugins   []string
	PodRulesPath     string

	PodResourcesSocket     string
	ResyncPeriod           time.Duration
	MetricsBindAddress     string
	HealthProbeBindAddress string
	AcceptICMP             bool
	AcceptICMPv6           bool
	TCOffload              string
	OffloadProfile         string
	CTZoneRange            string
	RoutedSources          bool
	Workers                int
}

// routedSourcesUsage is --routed-sources' help, for the agent and the
// offline commands.
const routedSourcesUsage = "judge a frame a local pod sends to another local pod on its bridge by its source address whatever it is (for pods that route traffic for others), instead of as coming from the sender's own addresses; every port then carries each receiver's whole ingress rules (docs/policy-semantics.md §4)"

// NewAgentOptions returns the defaults.
func NewAgentOptions() *AgentOptions {
	return &AgentOptions{
		NetworkPlugins:         append([]string(nil), policy.DefaultNetworkPlugins...),
		PodResourcesSocket:     podresources.DefaultSocket,
		ResyncPeriod:           DefaultResyncPeriod,
		MetricsBindAddress:     DefaultMetricsBindAddress,
		HealthProbeBindAddress: DefaultHealthProbeBindAddress,
		TCOffload:              string(tcdriver.OffloadAuto),
		OffloadProfile:         tcdriver.ProfileAuto,
		CTZoneRange:            tcdriver.DefaultZoneRange.String(),
		Workers:                2,
	}
}

// AddFlags registers the agent's flags on fs.
func (o *AgentOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "path to a kubeconfig; empty: the in-cluster configuration (ServiceAccount)")
	fs.StringVar(&o.Master, "master", o.Master, "address of the Kubernetes API server (overrides the kubeconfig's)")
	fs.StringVar(&o.HostnameOverride, "hostname-override", o.HostnameOverride, "this node's name as Kubernetes knows it (spec.nodeName of its pods); empty: the host name")
	fs.StringSliceVar(&o.NetworkPlugins, "network-plugins", o.NetworkPlugins, "CNI plugin types (first plugin of the NAD config) whose networks are enforced, comma separated")
	fs.StringVar(&o.PodRulesPath, "pod-rules-path", o.PodRulesPath, "if set, write each attachment's computed rule set and tc commands under this directory, for troubleshooting")
	fs.StringVar(&o.PodResourcesSocket, "podresources-socket", o.PodResourcesSocket, "the kubelet's PodResources API socket")
	fs.DurationVar(&o.ResyncPeriod, "resync-period", o.ResyncPeriod, "how often to re-read PodResources and the kernel's TC state and repair drift")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress, "host:port serving Prometheus metrics on /metrics; 0 disables")
	fs.StringVar(&o.HealthProbeBindAddress, "health-probe-bind-address", o.HealthProbeBindAddress, "host:port serving /healthz and /readyz; 0 disables")
	fs.BoolVar(&o.AcceptICMP, "accept-icmp", o.AcceptICMP, "always allow ICMP (every type, as multi-networkpolicy-iptables) on isolated attachments")
	fs.BoolVar(&o.AcceptICMPv6, "accept-icmpv6", o.AcceptICMPv6, "always allow ICMPv6 (every type) on isolated attachments; neighbour discovery always passes")
	fs.StringVar(&o.TCOffload, "tc-offload", o.TCOffload, tcOffloadUsage)
	fs.StringVar(&o.OffloadProfile, "offload-profile", o.OffloadProfile, offloadProfileUsage)
	fs.StringVar(&o.CTZoneRange, "ct-zone-range", o.CTZoneRange, "conntrack zones FIRST-LAST: each network gets the zone its namespace/name hashes to, so networks with overlapping addresses never share connection state; two networks on one zone are refused (Event), choose another range")
	fs.BoolVar(&o.RoutedSources, "routed-sources", o.RoutedSources, routedSourcesUsage)
	fs.IntVar(&o.Workers, "workers", o.Workers, "attachments computed in parallel (programming the kernel is serialized)")
}

// Validate checks the options and fills derived defaults (the node name).
func (o *AgentOptions) Validate() error {
	var errs []error
	if o.HostnameOverride == "" {
		h, err := os.Hostname()
		if err != nil {
			errs = append(errs, fmt.Errorf("--hostname-override not set and the host name is unknown: %w", err))
		}
		o.HostnameOverride = strings.ToLower(strings.TrimSpace(h))
	}
	var plugins []string
	for _, p := range o.NetworkPlugins {
		if p = strings.TrimSpace(p); p != "" {
			plugins = append(plugins, p)
		}
	}
	if len(plugins) == 0 {
		errs = append(errs, errors.New("--network-plugins: name at least one CNI plugin type"))
	}
	o.NetworkPlugins = plugins
	if o.PodResourcesSocket == "" {
		errs = append(errs, errors.New("--podresources-socket must not be empty"))
	}
	if o.ResyncPeriod < time.Second {
		errs = append(errs, fmt.Errorf("--resync-period=%s: must be at least 1s", o.ResyncPeriod))
	}
	for flag, addr := range map[string]string{"--metrics-bind-address": o.MetricsBindAddress, "--health-probe-bind-address": o.HealthProbeBindAddress} {
		if addr == "0" || addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: want host:port or 0: %w", flag, addr, err))
		}
	}
	offload, err := tcdriver.ParseOffload(o.TCOffload)
	if err != nil {
		errs = append(errs, err)
	}
	if prof, err := o.Profile(); err != nil {
		errs = append(errs, err)
	} else if offload == tcdriver.OffloadRequired && !prof.Hardware {
		errs = append(errs, fmt.Errorf("--tc-offload=%s with --offload-profile=%s: that profile puts no filter in hardware, so nothing could be required; use a hardware profile (auto) or --tc-offload=auto", o.TCOffload, prof.Name))
	}
	if _, err := tcdriver.ParseZoneRange(o.CTZoneRange); err != nil {
		errs = append(errs, err)
	}
	if o.Workers < 1 {
		errs = append(errs, fmt.Errorf("--workers=%d: must be at least 1", o.Workers))
	}
	return errors.Join(errs...)
}

const tcOffloadUsage = "hardware offload of the TC filters: required (a pod whose filters the offload profile puts in hardware are not all there after a change is closed, with an Event, and the agent is not ready), auto (the NIC offloads what it takes, the rest is enforced in software and reported in filters_not_in_hardware) or software (skip_hw on every filter); skip-sw and skip-hw are accepted for required and software (docs/deployment.md)"

const offloadProfileUsage = "what the NIC matches in hardware, which the TC compiler respects: auto (mlx5-6.3 on Linux 6.3+, else mlx5-6.1), mlx5-6.1, mlx5-6.3 or software (compact ranges, nothing offloaded)"

// Profile returns the --offload-profile, "auto" resolved from the running
// kernel.
func (o *AgentOptions) Profile() (tcdriver.Profile, error) {
	return tcdriver.ParseProfile(o.OffloadProfile, tcdriver.RunningKernelRelease())
}

func enabledAddress(addr string) bool { return addr != "" && addr != "0" }
