package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/preflight"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// PodResources is what the agent needs from the kubelet's PodResources API;
// *podresources.Client implements it.
type PodResources interface {
	List(ctx context.Context) ([]*podresourcesv1.PodResources, error)
	Get(ctx context.Context, namespace, name string) (*podresourcesv1.PodResources, error)
	GetAllocatableResources(ctx context.Context) (*podresourcesv1.AllocatableResourcesResponse, error)
}

// AgentConfig is everything an Agent runs with. The command line fills it
// from flags with the real implementations; tests inject fakes at the three
// node-local edges (PodResources, Resolver, Driver) and talk to a real API
// server.
type AgentConfig struct {
	Options      AgentOptions
	Clients      *Clients
	PodResources PodResources
	Resolver     sriov.Resolver
	// Topology says which Linux bridge each representor is a port of,
	// the bridge's ports and the VFs' MACs (nil: no bridges, every
	// representor is programmed alone, the old placement).
	Topology sriov.Topology
	Driver   tcdriver.Driver
	// Conntrack cuts the established connections a changed rule set
	// denies (nil: none are cut).
	Conntrack tcdriver.ConnCutter
	// Links lists the node's network devices, for the sweep that removes
	// our filters from devices that are neither the representor of a VF
	// the kubelet can allocate nor an attachment's (nil: no such sweep).
	Links func() ([]string, error)
	// Preflight is the node the offload preflight reads (nil: no
	// preflight): run at start and after every resync, reported as the
	// preflight metric, log lines and Events on the Node, and, with
	// --tc-offload=required, not ready while a PF is not enforced in
	// hardware.
	Preflight preflight.Host
	// Registry receives the metrics (nil: a private registry).
	Registry *prometheus.Registry
	Log      logrus.FieldLogger
}

// Agent enforces MultiNetworkPolicy on this node's VF representors.
type Agent struct {
	opts      AgentOptions
	log       logrus.FieldLogger
	clients   *Clients
	pr        PodResources
	resolver  sriov.Resolver
	topology  sriov.Topology
	driver    tcdriver.Driver
	conntrack tcdriver.ConnCutter
	links     func() ([]string, error)
	engine    *policy.Engine
	mapper    *podresources.Mapper
	registry  *prometheus.Registry
	metrics   *agentMetrics
	informers *informerSet
	// preflightHost: see AgentConfig.Preflight.
	preflightHost preflight.Host

	broadcaster record.EventBroadcaster
	events      *eventReporter

	// attQueue holds attachment IDs to compute and program; podQueue holds
	// local pod keys (namespace/name) whose VF mapping must be refreshed.
	attQueue workqueue.TypedRateLimitingInterface[string]
	podQueue workqueue.TypedRateLimitingInterface[string]

	// driverMu serializes kernel programming: the driver is one netlink
	// socket, and the check that a representor has no new owner must be
	// atomic with removing its rules.
	driverMu sync.Mutex

	mu sync.Mutex
	// local are the attachments of this node's pods on enforced networks.
	local map[string]*localAttachment
	// byPod lists the attachment IDs of each local pod.
	byPod map[string][]string
	// vfOwner maps a VF PCI address to the attachment that now uses it.
	vfOwner map[string]string
	// podRes caches each local pod's devices once they mapped: the kubelet
	// assigns devices at admission and never changes them for a pod UID.
	podRes map[string]cachedResources
	// programmed records what is installed for each attachment.
	programmed map[string]*programmedState
	// ports is what each VF representor on a bridge is to enforce.
	ports map[string]*portWant
	// vfReps maps the representor of every VF the kubelet can allocate
	// (as of the last sweep) and of every planned port to its VF.
	vfReps map[string]string
	// vfRepsKnown: the kubelet's allocatable devices were listed once, so
	// vfReps tells a VF representor of ours from an uplink.
	vfRepsKnown bool
	// vfResource is the device plugin resource of every VF the kubelet
	// can allocate (as of the last sweep).
	vfResource map[string]string
	// aloneLogged are the representors said once to be on no bridge.
	aloneLogged map[string]bool
	// bridges is what was last applied on each bridge.
	bridges map[string]*bridgeState
	// preflightLast is each PF's last preflight message, so that a log
	// line and an Event are sent when it changes; preflightBlock is why
	// the preflight keeps the agent not ready ("" when it does not);
	// preflightRan: the preflight ran once.
	preflightLast  map[string]string
	preflightBlock string
	preflightRan   bool

	ready   atomic.Bool
	started atomic.Bool
	// logs rate-limits the lines about a problem that is retried.
	logs *logLimiter
	// resyncSoon asks the resync loop for a resync now: a NAD change
	// changes which free VFs must be closed.
	resyncSoon chan struct{}
}

// localAttachment is one local pod network on an enforced network, with the
// VFs the kubelet assigned it (normally one; two if the pod attached the
// same network twice).
type localAttachment struct {
	att     policy.Attachment
	podUID  types.UID
	devices []string
	kind    vfsKind
}

// vfsKind says what a localAttachment's VFs are.
type vfsKind int

const (
	// vfsOnNetwork: the VFs of the pod on one enforced network.
	vfsOnNetwork vfsKind = iota
	// vfsUnmapped: VFs of enforced resources of a pod whose networks could
	// not be mapped; isolated both ways. Not known to the policy engine.
	vfsUnmapped
	// vfsOpen: VFs of enforced resources of a pod that mapped, on no
	// enforced network (another plugin, or no network: DPDK); not policed,
	// so opened. Not known to the policy engine.
	vfsOpen
)

type cachedResources struct {
	uid types.UID
	res *podresourcesv1.PodResources
}

type programmedState struct {
	// reps maps VF PCI to the representor we programmed for it.
	reps  map[string]string
	state string
	// good is the last rule set programmed from valid input, which a held
	// attachment keeps (nil: none this run).
	good *policy.RuleSet
}

// NewAgent validates the configuration and returns an agent ready to Run.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if err := cfg.Options.Validate(); err != nil {
		return nil, err
	}
	if cfg.Clients == nil || cfg.PodResources == nil || cfg.Resolver == nil || cfg.Driver == nil {
		return nil, errors.New("agent: Clients, PodResources, Resolver and Driver are required")
	}
	log := cfg.Log
	if log == nil {
		log = logrus.StandardLogger()
	}
	reg := cfg.Registry
	if reg == nil {
		reg = newRegistry()
	}
	a := &Agent{
		opts:      cfg.Options,
		log:       log.WithField("node", cfg.Options.HostnameOverride),
		clients:   cfg.Clients,
		resolver:  cfg.Resolver,
		topology:  cfg.Topology,
		driver:    cfg.Driver,
		conntrack: cfg.Conntrack,
		links:     cfg.Links,
		engine: policy.NewEngine(policy.Options{
			NetworkPlugins: cfg.Options.NetworkPlugins,
			AcceptICMP:     cfg.Options.AcceptICMP,
			AcceptICMPv6:   cfg.Options.AcceptICMPv6,
		}),
		mapper:      podresources.NewMapper(),
		registry:    reg,
		metrics:     newAgentMetrics(reg),
		local:       map[string]*localAttachment{},
		byPod:       map[string][]string{},
		vfOwner:     map[string]string{},
		podRes:      map[string]cachedResources{},
		programmed:  map[string]*programmedState{},
		ports:       map[string]*portWant{},
		vfReps:      map[string]string{},
		vfResource:  map[string]string{},
		aloneLogged: map[string]bool{},
		bridges:     map[string]*bridgeState{},
		logs:        newLogLimiter(10 * time.Second),
		resyncSoon:  make(chan struct{}, 1),
	}
	a.preflightHost, a.preflightLast = cfg.Preflight, map[string]string{}
	a.pr = instrumentedPodResources{next: cfg.PodResources, metrics: a.metrics}
	a.attQueue = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "attachments"})
	a.podQueue = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "pods"})
	a.informers = newInformerSet(cfg.Clients, cfg.Options.HostnameOverride)
	a.broadcaster = record.NewBroadcaster()
	recorder := a.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: eventComponent, Host: cfg.Options.HostnameOverride})
	a.events = newEventReporter(recorder, a.uidOf, cfg.Options.ResyncPeriod)
	if err := a.addEventHandlers(); err != nil {
		return nil, err
	}
	return a, nil
}

// initialMappingDeadline bounds each start-up attempt to read PodResources,
// so that a kubelet that is not there is logged within seconds (the client
// retries an absent socket until its context ends).
const initialMappingDeadline = 5 * time.Second

// Registry returns the registry the agent's metrics are on.
func (a *Agent) Registry() *prometheus.Registry { return a.registry }

// Ready reports whether, since start, every local attachment was
// programmed once, or held or failed with an Event saying why; and, with
// --tc-offload=required, whether the offload preflight found every PF
// enforced in hardware and no attachment is refused (offloadNotReady).
func (a *Agent) Ready() bool {
	return a.ready.Load() && a.preflightBlocker() == "" && a.offloadNotReady() == ""
}

// Run runs the agent until ctx ends. Rules stay in the kernel when it
// returns: a restart adopts them, and pods stay protected meanwhile.
func (a *Agent) Run(ctx context.Context) error {
	if !a.started.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	a.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.clients.Kube.CoreV1().Events("")})
	defer a.broadcaster.Shutdown()

	servers, err := a.startHTTP(ctx)
	if err != nil {
		return err
	}
	defer func() {
		for _, s := range servers {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.Shutdown(sctx)
			cancel()
		}
	}()

	a.log.WithFields(logrus.Fields{"networkPlugins": a.opts.NetworkPlugins, "podResources": a.opts.PodResourcesSocket}).Info("starting")
	a.informers.start(ctx.Done())
	defer a.informers.shutdown()
	defer a.attQueue.ShutDown()
	defer a.podQueue.ShutDown()
	// Once ctx ends, a worker blocked on an empty queue must return.
	stopQueues := context.AfterFunc(ctx, func() {
		a.attQueue.ShutDown()
		a.podQueue.ShutDown()
	})
	defer stopQueues()
	if !a.waitForCaches(ctx) {
		return fmt.Errorf("waiting for informer caches: %w", ctx.Err())
	}
	a.log.Info("caches synced; mapping local pods and programming every attachment")

	// Initial programming before workers start: every attachment gets its
	// rules once, then the agent reports ready. Rules already in the kernel
	// from a previous run are adopted by the driver, not flushed.
	for {
		rctx, cancel := context.WithTimeout(ctx, initialMappingDeadline)
		err := a.resync(rctx)
		cancel()
		if err == nil {
			break
		} else if ctx.Err() != nil {
			return ctx.Err()
		} else if a.logs.allow(reasonPodResources) {
			a.log.WithError(err).Warn("initial mapping failed (kubelet PodResources); not ready, retrying every 2s")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	// Ready once every attachment has a state: a failed one is retried
	// with backoff, and was reported with an Event on its pod.
	for ctx.Err() == nil && (a.attQueue.Len() > 0 || !a.allAttempted()) {
		id, shutdown := a.attQueue.Get()
		if shutdown {
			break
		}
		a.processAttachment(ctx, id)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	a.runPreflight(ctx)
	a.ready.Store(true)
	a.log.WithFields(a.stateCounts()).Info("ready")

	var wg sync.WaitGroup
	for range a.opts.Workers {
		wg.Go(func() {
			for a.processNextAttachment(ctx) {
			}
		})
	}
	wg.Go(func() {
		for a.processNextPod(ctx) {
		}
	})
	wg.Go(func() { a.resyncLoop(ctx) })
	<-ctx.Done()
	a.attQueue.ShutDown()
	a.podQueue.ShutDown()
	wg.Wait()
	a.log.Info("stopped; TC rules stay in place")
	return nil
}

func (a *Agent) resyncLoop(ctx context.Context) {
	t := time.NewTicker(a.opts.ResyncPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.resyncSoon:
		}
		if err := a.resync(ctx); err != nil && ctx.Err() == nil && a.logs.allow(reasonPodResources) {
			a.log.WithError(err).Warn("resync failed; keeping the current rules")
		}
		a.runPreflight(ctx)
	}
}

func (a *Agent) startHTTP(ctx context.Context) ([]*http.Server, error) {
	var servers []*http.Server
	serve := func(addr string, h http.Handler, what string) error {
		ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("%s on %s: %w", what, addr, err)
		}
		s := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, s)
		a.log.WithField("address", ln.Addr().String()).Infof("serving %s", what)
		go func() {
			if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.WithError(err).Errorf("%s server", what)
			}
		}()
		return nil
	}
	if enabledAddress(a.opts.MetricsBindAddress) {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}))
		if err := serve(a.opts.MetricsBindAddress, mux, "metrics"); err != nil {
			return servers, err
		}
	}
	if enabledAddress(a.opts.HealthProbeBindAddress) {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte("ok\n"))
		})
		mux.HandleFunc("/readyz", a.readyz)
		if err := serve(a.opts.HealthProbeBindAddress, mux, "health probes"); err != nil {
			return servers, err
		}
	}
	return servers, nil
}

// readyz serves /readyz: 503 with why while not ready.
func (a *Agent) readyz(w http.ResponseWriter, _ *http.Request) {
	if !a.ready.Load() {
		http.Error(w, "not ready: caches syncing, or attachments not programmed yet", http.StatusServiceUnavailable)
		return
	}
	if why := a.preflightBlocker(); why != "" {
		http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
		return
	}
	if msg := a.offloadNotReady(); msg != "" {
		http.Error(w, msg, http.StatusServiceUnavailable)
		return
	}
	// Held and failed attachments were reported with Events.
	_, _ = fmt.Fprintf(w, "ok %v\n", a.stateCounts())
}

// uidOf finds an object's UID in the caches, so Events link to the object.
func (a *Agent) uidOf(kind, namespace, name string) types.UID {
	var inf cache.SharedIndexInformer
	switch kind {
	case "Pod":
		inf = a.informers.pods
	case "MultiNetworkPolicy":
		inf = a.informers.policies
	case "NetworkAttachmentDefinition":
		inf = a.informers.nads
	case "Namespace":
		inf = a.informers.namespaces
		namespace = ""
	case "Node":
		// As the kubelet does for the Node's Events, which `kubectl
		// describe node` finds by it.
		return types.UID(name)
	default:
		return ""
	}
	key := name
	if namespace != "" {
		key = namespace + "/" + name
	}
	obj, ok, err := inf.GetStore().GetByKey(key)
	if err != nil || !ok {
		return ""
	}
	if m, ok := obj.(interface{ GetUID() types.UID }); ok {
		return m.GetUID()
	}
	return ""
}

// waitForCaches waits for the informers. Until they sync it checks the
// API server every second and says, from the first second and then every
// 10s, why it cannot be reached: a reflector's own error waits for a dial
// timeout.
func (a *Agent) waitForCaches(ctx context.Context) bool {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for !a.informers.hasSynced() {
			if err := a.probeAPIServer(pctx); err != nil && pctx.Err() == nil && a.logs.allow("apiserver") {
				a.log.WithError(err).Warn("API server unreachable; waiting for the caches, the kernel's rules are left as they are")
			}
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return cache.WaitForNamedCacheSync("multi-networkpolicy-tc", ctx.Done(), a.informers.hasSynced)
}

// probeAPIServer asks the API server for its version, giving up after a
// second (the informers' own requests wait for the dial timeout).
func (a *Agent) probeAPIServer(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if rc, ok := a.clients.Kube.Discovery().RESTClient().(*rest.RESTClient); ok && rc != nil {
		return rc.Get().AbsPath("/version").Do(ctx).Error()
	}
	_, err := a.clients.Kube.Discovery().ServerVersion() // fake clientsets
	return err
}

// allAttempted reports whether every local attachment has a state.
func (a *Agent) allAttempted() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.local {
		if ps := a.programmed[id]; ps == nil || ps.state == "" {
			return false
		}
	}
	return true
}

// stateCounts counts the local attachments by state, for the log.
func (a *Agent) stateCounts() logrus.Fields {
	f := logrus.Fields{}
	for _, st := range a.Attachments() {
		n, _ := f[st.State].(int)
		f[st.State] = n + 1
	}
	return f
}

// newAgentCommandRunner returns the RunE of the root command: the agent.
func newAgentCommandRunner(opts *AgentOptions) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return &ExitError{Code: exitBadInput, Err: fmt.Errorf("unexpected arguments %q (the agent takes only flags; see --help)", args)}
		}
		if err := opts.Validate(); err != nil {
			return &ExitError{Code: exitBadInput, Err: err}
		}
		routeKlog(logrus.StandardLogger())
		clients, _, err := NewClients(opts.Kubeconfig, opts.Master)
		if err != nil {
			return err
		}
		// The kubelet may still be starting, so this is no reason to exit;
		// but a DaemonSet that does not mount the socket (upstream
		// multi-networkpolicy-tc's) must say so at once.
		if err := podresources.CheckSocket(opts.PodResourcesSocket); err != nil {
			logrus.WithError(err).Error("no pod is mapped to its VF, and so none is enforced, until the socket is there: mount the kubelet's pod-resources directory (docs/deployment.md)")
		}
		pr, err := podresources.New(opts.PodResourcesSocket, podresources.Options{})
		if err != nil {
			return err
		}
		defer func() { _ = pr.Close() }()
		reg := newRegistry()
		offload, _ := tcdriver.ParseOffload(opts.TCOffload)
		warnOffloadSpelling(logrus.StandardLogger(), opts.TCOffload)
		profile, _ := opts.Profile()
		zones, _ := tcdriver.ParseZoneRange(opts.CTZoneRange)
		drv, err := tcdriver.New(tcdriver.Options{Offload: offload, Profile: profile, Zones: zones, RoutedSources: opts.RoutedSources}, logrus.StandardLogger(), tcdriver.NewMetrics(reg))
		if err != nil {
			return err
		}
		defer func() { _ = drv.Close() }()
		// The counters collector reads the filters through its own socket.
		counters, err := tcdriver.New(tcdriver.Options{}, logrus.StandardLogger(), nil)
		if err != nil {
			return err
		}
		defer func() { _ = counters.Close() }()
		reg.MustRegister(tcdriver.NewCountersCollector(drv, counters, tcdriver.Options{}, logrus.StandardLogger()))
		agent, err := NewAgent(AgentConfig{
			Options:      *opts,
			Clients:      clients,
			PodResources: pr,
			Resolver:     sriov.NewSysfsResolver(),
			Topology:     sriov.NetlinkTopology{},
			Driver:       drv,
			Conntrack:    tcdriver.NetlinkConntrack{Zones: zones},
			Links:        linkNames,
			Preflight:    preflight.NewSystem(),
			Registry:     reg,
		})
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return agent.Run(ctx)
	}
}
