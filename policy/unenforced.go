package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// UnenforcedNetwork is a network a policy's policy-for annotation names on
// which the policy enforces nothing: no NAD by that name exists, or its
// plugin type is not one of Options.NetworkPlugins. A NAD whose config does
// not parse is not listed: it is an invalid input of its own.
type UnenforcedNetwork struct {
	Network NetworkRef
	// Missing: no NAD; otherwise PluginType is the NAD's type.
	Missing    bool
	PluginType string
}

func (u UnenforcedNetwork) String() string {
	if u.Missing {
		return fmt.Sprintf("network %s: no NetworkAttachmentDefinition %s exists", u.Network, u.Network)
	}
	return fmt.Sprintf("network %s: its plugin type %q is not one of --network-plugins", u.Network, u.PluginType)
}

// UnenforcedNetworks returns, sorted, the networks of a policy on which it
// enforces nothing (nil for an unknown policy).
func (e *Engine) UnenforcedNetworks(namespace, name string) []UnenforcedNetwork {
	e.mu.RLock()
	defer e.mu.RUnlock()
	p := e.state.policies[key(namespace, name)]
	if p == nil {
		return nil
	}
	var out []UnenforcedNetwork
	for n := range p.networks {
		nad := e.state.nads[n]
		switch {
		case nad == nil:
			out = append(out, UnenforcedNetwork{Network: n, Missing: true})
		case nad.err == nil && !slices.Contains(e.opts.NetworkPlugins, nad.pluginType):
			out = append(out, UnenforcedNetwork{Network: n, PluginType: nad.pluginType})
		}
	}
	slices.SortFunc(out, func(a, b UnenforcedNetwork) int { return cmp.Compare(a.Network.String(), b.Network.String()) })
	return out
}

// PoliciesOnNetwork returns, sorted, the policies (namespace/name) whose
// policy-for names the network.
func (e *Engine) PoliciesOnNetwork(n NetworkRef) []string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	var out []string
	for _, p := range e.state.policies {
		if p.networks[n] {
			out = append(out, p.key())
		}
	}
	slices.Sort(out)
	return out
}

// PodIPs returns the addresses of a pod on a network, as its network-status
// (or static IPs) give them; nil for an unknown pod.
func (e *Engine) PodIPs(namespace, name string, network NetworkRef) []netip.Addr {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if p := e.state.pods[key(namespace, name)]; p != nil {
		return slices.Clone(p.ips[network])
	}
	return nil
}
