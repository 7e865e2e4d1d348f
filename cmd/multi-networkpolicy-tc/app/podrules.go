package app

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/tcdriver"
)

// podRulesFile is where --pod-rules-path keeps one attachment's rules:
// <namespace>_<pod>_<network namespace>_<network name>.rules. Kubernetes
// names never contain "_", so the name is unambiguous.
func (a *Agent) podRulesFile(id string) string {
	return filepath.Join(a.opts.PodRulesPath, strings.ReplaceAll(id, "/", "_")+".rules")
}

// writePodRules writes, for troubleshooting, the rule set the agent
// computed for an attachment and the tc commands equivalent to what the
// driver programs on each of its representors. Writing is best effort: a
// full disk must not stop enforcement.
func (a *Agent) writePodRules(la *localAttachment, rs *policy.RuleSet, reps map[string]string) {
	if a.opts.PodRulesPath == "" {
		return
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "# attachment %s (pod uid %s)\n", la.att, la.podUID)
	vfs := make([]string, 0, len(reps))
	for vf := range reps {
		vfs = append(vfs, vf)
	}
	sort.Strings(vfs)
	for _, vf := range vfs {
		fmt.Fprintf(&b, "# VF %s representor %s\n", vf, reps[vf])
	}
	js, err := json.MarshalIndent(rs, "", "  ")
	if err == nil {
		b.WriteString("# rule set:\n")
		for _, line := range strings.Split(string(js), "\n") {
			b.WriteString("#   " + line + "\n")
		}
	}
	offload, _ := tcdriver.ParseOffload(a.opts.TCOffload)
	profile, _ := a.opts.Profile()
	zones, _ := tcdriver.ParseZoneRange(a.opts.CTZoneRange)
	topts := tcdriver.Options{Offload: offload, Profile: profile, Zones: zones, RoutedSources: a.opts.RoutedSources}
	for _, vf := range vfs {
		rep := reps[vf]
		a.mu.Lock()
		w := a.ports[rep]
		a.mu.Unlock()
		var err error
		if br := a.lastBridge(portBridge(w)); br != nil && !w.closed {
			// The port as the bridge placement programs it: the pod's
			// egress and the other local pods' ingress; its own ingress
			// is on every other port of the bridge.
			err = writeBridgeBatch(&b, br, topts, map[string]bool{rep: true})
		} else {
			err = tcdriver.WriteBatch(&b, rep, rs, topts)
		}
		if err != nil {
			fmt.Fprintf(&b, "# cannot render tc commands: %v\n", err)
		}
	}
	path := a.podRulesFile(la.att.ID())
	if err := os.MkdirAll(a.opts.PodRulesPath, 0o755); err != nil {
		a.log.WithError(err).Warn("--pod-rules-path")
		return
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil { //nolint:gosec // troubleshooting output, not secret
		a.log.WithError(err).Warn("--pod-rules-path")
		return
	}
	if err := os.Rename(tmp, path); err != nil {
		a.log.WithError(err).Warn("--pod-rules-path")
	}
}

func portBridge(w *portWant) string {
	if w == nil {
		return ""
	}
	return w.bridge
}

func (a *Agent) removePodRules(id string) {
	if a.opts.PodRulesPath == "" {
		return
	}
	if err := os.Remove(a.podRulesFile(id)); err != nil && !os.IsNotExist(err) {
		a.log.WithError(err).Warn("--pod-rules-path")
	}
}
