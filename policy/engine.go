package policy

import (
	"slices"
	"strings"
	"sync"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
)

// DefaultNetworkPlugins is the default of --network-plugins.
var DefaultNetworkPlugins = []string{"accelerated-bridge"}

// Options are the agent-wide settings that shape rule sets.
type Options struct {
	// NetworkPlugins lists the CNI plugin types (the NAD's first plugin)
	// whose networks are enforced. Empty means DefaultNetworkPlugins.
	NetworkPlugins []string
	AcceptICMP     bool
	AcceptICMPv6   bool
}

// Engine holds the cluster objects the policy core needs and the local
// attachments it enforces, and computes rule sets. It keeps indexes so that
// an object change reports only the attachments whose rule sets it may
// change. It is safe for concurrent use.
type Engine struct {
	mu    sync.RWMutex
	opts  Options
	state *state
}

// NewEngine returns an empty engine.
func NewEngine(opts Options) *Engine {
	if len(opts.NetworkPlugins) == 0 {
		opts.NetworkPlugins = DefaultNetworkPlugins
	}
	return &Engine{opts: opts, state: newState()}
}

// Options returns the engine's options.
func (e *Engine) Options() Options { return e.opts }

// UpsertPolicy adds or replaces a policy and returns the local attachments
// whose rule sets may have changed.
func (e *Engine) UpsertPolicy(p *mnpv1beta1.MultiNetworkPolicy) []Attachment {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.state.policies[key(p.Namespace, p.Name)]
	e.state.setPolicy(p)
	return e.affectedByPolicy(old, e.state.policies[key(p.Namespace, p.Name)])
}

// DeletePolicy removes a policy.
func (e *Engine) DeletePolicy(namespace, name string) []Attachment {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.state.policies[key(namespace, name)]
	e.state.deletePolicy(namespace, name)
	return e.affectedByPolicy(old, nil)
}

// UpsertPod adds or replaces a pod (local or remote).
func (e *Engine) UpsertPod(p *corev1.Pod) []Attachment {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.state.pods[key(p.Namespace, p.Name)]
	e.state.setPod(p)
	return e.affectedByPod(old, e.state.pods[key(p.Namespace, p.Name)])
}

// DeletePod removes a pod.
func (e *Engine) DeletePod(namespace, name string) []Attachment {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.state.pods[key(namespace, name)]
	e.state.deletePod(namespace, name)
	return e.affectedByPod(old, nil)
}

// UpsertNamespace adds or replaces a namespace.
func (e *Engine) UpsertNamespace(ns *corev1.Namespace) []Attachment {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.state.namespaces[ns.Name]
	e.state.setNamespace(ns)
	return e.affectedByNamespace(old, e.state.namespaces[ns.Name])
}

// DeleteNamespace removes a namespace.
func (e *Engine) DeleteNamespace(name string) []Attachment {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.state.namespaces[name]
	e.state.deleteNamespace(name)
	return e.affectedByNamespace(old, nil)
}

// UpsertNAD adds or replaces a NetworkAttachmentDefinition.
func (e *Engine) UpsertNAD(n *nadv1.NetworkAttachmentDefinition) []Attachment {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.state.setNAD(n)
	return e.affectedByNetwork(NetworkRef{Namespace: n.Namespace, Name: n.Name})
}

// DeleteNAD removes a NetworkAttachmentDefinition.
func (e *Engine) DeleteNAD(namespace, name string) []Attachment {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.state.deleteNAD(namespace, name)
	return e.affectedByNetwork(NetworkRef{Namespace: namespace, Name: name})
}

// SetAttachments replaces the set of local attachments to enforce (found by
// the agent through PodResources). Attachments are identified by ID().
func (e *Engine) SetAttachments(atts []Attachment) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.state.setAttachments(atts)
}

// Attachments returns the local attachments, sorted by ID.
func (e *Engine) Attachments() []Attachment {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.state.sortedAttachments()
}

// Enforced reports whether the network is one the agent enforces: its NAD
// is known and its plugin type is one of Options.NetworkPlugins.
func (e *Engine) Enforced(network NetworkRef) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.state.enforced(network, e.opts.NetworkPlugins)
}

// Compute returns the rule set of one attachment. The rule set is always
// safe to program: invalid input only ever removes allowed traffic. The
// returned error (an errors.Join of *InputError) lists every problem found
// in the objects that shaped this rule set, for logs and Events.
func (e *Engine) Compute(att Attachment) (*RuleSet, error) {
	e.mu.Lock() // computing fills the policies' resolution caches
	defer e.mu.Unlock()
	c := newComputation(e.state, e.opts)
	return c.ruleSet(att)
}

// ComputeAll returns the rule sets of all local attachments, sorted by
// attachment ID, sharing peer resolution between attachments.
func (e *Engine) ComputeAll() ([]*RuleSet, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := newComputation(e.state, e.opts)
	return c.ruleSets(e.state.sortedAttachments())
}

// ComputeFor is ComputeAll restricted to the given attachments.
func (e *Engine) ComputeFor(atts []Attachment) ([]*RuleSet, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := newComputation(e.state, e.opts)
	return c.ruleSets(atts)
}

// InputErrors returns every problem found in the objects the engine holds
// (policies, pods, NADs), one per object field, sorted, whether or not a
// local attachment is affected. Each is an *InputError.
func (e *Engine) InputErrors() []error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	var out []error
	for _, p := range e.state.policies {
		out = append(out, p.errs...)
	}
	for _, p := range e.state.pods {
		out = append(out, p.errs...)
	}
	for _, n := range e.state.nads {
		if n.err != nil {
			out = append(out, n.err)
		}
	}
	slices.SortFunc(out, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return out
}
