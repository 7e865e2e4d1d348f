package policy

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"

	mnpv1beta1 "github.com/k8snetworkplumbingwg/multi-networkpolicy/pkg/apis/k8s.cni.cncf.io/v1beta1"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// nadInfo is what the core needs of a NetworkAttachmentDefinition.
type nadInfo struct {
	pluginType string
	err        error
}

// nadPluginType returns the CNI type of a NAD: its config's "type", or the
// first plugin's of a conflist.
// NADPluginType returns the CNI plugin type of a NAD's config (its first
// plugin for a conflist), or why it has none.
func NADPluginType(n *nadv1.NetworkAttachmentDefinition) (string, error) {
	return nadPluginType(n)
}

func nadPluginType(n *nadv1.NetworkAttachmentDefinition) (string, error) {
	var conf struct {
		Type    string `json:"type"`
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if n.Spec.Config == "" {
		return "", errors.New("spec.config is empty")
	}
	if err := json.Unmarshal([]byte(n.Spec.Config), &conf); err != nil {
		return "", err
	}
	switch {
	case conf.Type != "":
		return conf.Type, nil
	case len(conf.Plugins) > 0 && conf.Plugins[0].Type != "":
		return conf.Plugins[0].Type, nil
	}
	return "", errors.New("spec.config has no plugin type")
}

// state is the engine's object store with its indexes.
type state struct {
	policies   map[string]*policyInfo
	policiesNS map[string]map[string]*policyInfo
	// crossNS holds the policies whose peers may be in other namespaces.
	crossNS    map[string]*policyInfo
	pods       map[string]*podInfo
	podsNS     map[string]map[string]*podInfo
	namespaces map[string]labels.Set
	nads       map[NetworkRef]*nadInfo
	// attachments by ID, and attachment IDs by pod key.
	attachments map[string]Attachment
	attByPod    map[string][]string
}

func newState() *state {
	return &state{
		policies:    map[string]*policyInfo{},
		policiesNS:  map[string]map[string]*policyInfo{},
		crossNS:     map[string]*policyInfo{},
		pods:        map[string]*podInfo{},
		podsNS:      map[string]map[string]*podInfo{},
		namespaces:  map[string]labels.Set{},
		nads:        map[NetworkRef]*nadInfo{},
		attachments: map[string]Attachment{},
		attByPod:    map[string][]string{},
	}
}

func (s *state) setPolicy(p *mnpv1beta1.MultiNetworkPolicy) {
	info := newPolicyInfo(p)
	s.policies[info.key()] = info
	if s.policiesNS[p.Namespace] == nil {
		s.policiesNS[p.Namespace] = map[string]*policyInfo{}
	}
	s.policiesNS[p.Namespace][p.Name] = info
	if info.crossNamespace {
		s.crossNS[info.key()] = info
	} else {
		delete(s.crossNS, info.key())
	}
}

func (s *state) deletePolicy(namespace, name string) {
	delete(s.policies, key(namespace, name))
	delete(s.policiesNS[namespace], name)
	delete(s.crossNS, key(namespace, name))
}

func (s *state) setPod(p *corev1.Pod) {
	info := newPodInfo(p)
	s.pods[key(p.Namespace, p.Name)] = info
	if s.podsNS[p.Namespace] == nil {
		s.podsNS[p.Namespace] = map[string]*podInfo{}
	}
	s.podsNS[p.Namespace][p.Name] = info
}

func (s *state) deletePod(namespace, name string) {
	delete(s.pods, key(namespace, name))
	delete(s.podsNS[namespace], name)
}

func (s *state) setNamespace(ns *corev1.Namespace) {
	s.namespaces[ns.Name] = labels.Set(ns.Labels)
}

func (s *state) deleteNamespace(name string) { delete(s.namespaces, name) }

func (s *state) setNAD(n *nadv1.NetworkAttachmentDefinition) {
	t, err := nadPluginType(n)
	if err != nil {
		err = &InputError{Kind: "NetworkAttachmentDefinition", Namespace: n.Namespace, Name: n.Name, Field: "spec.config", Err: err}
	}
	s.nads[NetworkRef{Namespace: n.Namespace, Name: n.Name}] = &nadInfo{pluginType: t, err: err}
}

func (s *state) deleteNAD(namespace, name string) {
	delete(s.nads, NetworkRef{Namespace: namespace, Name: name})
}

func (s *state) setAttachments(atts []Attachment) {
	s.attachments = make(map[string]Attachment, len(atts))
	s.attByPod = map[string][]string{}
	for _, a := range atts {
		id := a.ID()
		if _, dup := s.attachments[id]; !dup {
			pk := key(a.PodNamespace, a.PodName)
			s.attByPod[pk] = append(s.attByPod[pk], id)
		}
		s.attachments[id] = a
	}
}

func (s *state) sortedAttachments() []Attachment {
	out := make([]Attachment, 0, len(s.attachments))
	for _, a := range s.attachments {
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b Attachment) int { return strings.Compare(a.ID(), b.ID()) })
	return out
}

// enforced: the NAD is known, parsable, and of an enforced plugin type. A
// NAD whose config cannot be parsed is not enforced; the error is reported
// by Compute for the attachments on it.
func (s *state) enforced(n NetworkRef, plugins []string) bool {
	nad := s.nads[n]
	return nad != nil && nad.err == nil && slices.Contains(plugins, nad.pluginType)
}
