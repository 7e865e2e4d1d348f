package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"text/tabwriter"
	"time"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	nadclient "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/client/clientset/versioned"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
	"sigs.k8s.io/yaml"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
)

// newDebugCommand groups the commands that show what the agent sees.
func newDebugCommand(stdout io.Writer) *cobra.Command {
	debug := &cobra.Command{
		Use:   "debug",
		Short: "Show what the agent sees on this node",
	}
	debug.AddCommand(newDebugMappingsCommand(stdout))
	debug.AddCommand(newDebugPodResourcesCommand(stdout))
	debug.AddCommand(newDebugOffloadCommand(stdout))
	return debug
}

type debugMappingsOptions struct {
	socket     string
	kubeconfig string
	offline    bool
	files      []string
	// podResourcesFile replaces the kubelet with a saved List answer.
	podResourcesFile string
	output           string
	timeout          time.Duration
}

func newDebugMappingsCommand(stdout io.Writer) *cobra.Command {
	o := &debugMappingsOptions{}
	cmd := &cobra.Command{
		Use:   "mappings",
		Short: "List every pod attachment on this node: pod, network, VF, PF, uplink and VF representor",
		Long: `mappings lists, for every pod on this node, each SR-IOV network attachment:
the network and interface, the device plugin resource, the VF the kubelet
assigned (from the PodResources API), the PF, uplink and VF index (from sysfs),
the VF representor the TC rules go on, and whether that netdev exists.

Pods and NetworkAttachmentDefinitions come from the API server (--kubeconfig,
else $KUBECONFIG, else in-cluster), or with --offline from manifest files
(-f, repeatable; multi-document YAML or JSON, List kinds accepted).
With --offline --podresources-file (the answer "debug podresources -o json"
saved on the node) nothing of the node is read: the pod -> network -> VF
mapping is shown, and the PF, uplink and representor columns, which need the
node's /sys, are "-".

It exits 1 when an attachment cannot be mapped or resolved, after printing
what it could, and when the pod-resources socket is missing.`,
		Example: `  multi-networkpolicy-tc debug mappings
  multi-networkpolicy-tc debug mappings -o json
  multi-networkpolicy-tc debug mappings --offline -f pods.yaml -f nads.yaml
  multi-networkpolicy-tc debug mappings --offline -f pods.yaml -f nads.yaml --podresources-file podresources.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return &ExitError{Code: exitBadInput, Err: err}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			if o.podResourcesFile != "" {
				return runDebugMappings(ctx, o, unresolvedOffline{}, nil, stdout)
			}
			return runDebugMappings(ctx, o, sriov.NewSysfsResolver(), sriov.NetdevExists, stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.socket, "podresources-socket", podresources.DefaultSocket, "kubelet PodResources API socket")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then in-cluster)")
	f.BoolVar(&o.offline, "offline", false, "read pods and NetworkAttachmentDefinitions from -f files instead of the API server")
	f.StringArrayVarP(&o.files, "filename", "f", nil, "manifest file with Pods and NetworkAttachmentDefinitions (with --offline; repeatable)")
	f.StringVar(&o.podResourcesFile, "podresources-file", "", "with --offline: read the kubelet's answer from this file (debug podresources -o json) instead of the socket, and leave /sys alone")
	f.StringVarP(&o.output, "output", "o", "table", "output format: table, json or yaml")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "overall time limit")
	return cmd
}

func (o *debugMappingsOptions) validate() error {
	switch o.output {
	case "table", "json", "yaml":
	default:
		return fmt.Errorf("--output %q: must be table, json or yaml", o.output)
	}
	if o.offline && len(o.files) == 0 {
		return errors.New("--offline needs at least one -f file with the pods and NetworkAttachmentDefinitions")
	}
	if !o.offline && len(o.files) > 0 {
		return errors.New("-f is only read with --offline")
	}
	if !o.offline && o.podResourcesFile != "" {
		return errors.New("--podresources-file is only read with --offline")
	}
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout %s: must be positive", o.timeout)
	}
	return nil
}

// debugMapping is one row: an attachment, or a pod or attachment that could
// not be mapped (Error set).
type debugMapping struct {
	Pod               string `json:"pod"`
	Network           string `json:"network,omitempty"`
	Interface         string `json:"interface,omitempty"`
	Resource          string `json:"resource,omitempty"`
	VFPCI             string `json:"vfPCI,omitempty"`
	PFPCI             string `json:"pfPCI,omitempty"`
	Uplink            string `json:"uplink,omitempty"`
	VFIndex           *int   `json:"vfIndex,omitempty"`
	Representor       string `json:"representor,omitempty"`
	RepresentorExists bool   `json:"representorExists"`
	Error             string `json:"error,omitempty"`
	// unresolved: offline from files, /sys was not read.
	unresolved bool
}

// debugMappingsSource answers the two questions the API server answers.
type debugMappingsSource interface {
	pod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
	nad(ctx context.Context, namespace, name string) (*nadv1.NetworkAttachmentDefinition, error)
}

var errDebugNotFound = errors.New("not found")

func runDebugMappings(ctx context.Context, o *debugMappingsOptions, resolver sriov.Resolver,
	netdevExists func(string) (bool, error), stdout io.Writer,
) error {
	// The socket first: without it nothing else matters, and its message
	// is the most useful one.
	if o.podResourcesFile == "" {
		if err := podresources.CheckSocket(o.socket); err != nil {
			return err
		}
	}
	var src debugMappingsSource
	var err error
	if o.offline {
		src, err = loadDebugManifests(o.files)
		if err != nil {
			return &ExitError{Code: exitBadInput, Err: err}
		}
	} else {
		src, err = newDebugAPISource(o.kubeconfig)
		if err != nil {
			return err
		}
	}
	var entries []*podresourcesv1.PodResources
	if o.podResourcesFile != "" {
		if entries, err = readPodResourcesFile(o.podResourcesFile); err != nil {
			return &ExitError{Code: exitBadInput, Err: err}
		}
	} else if entries, err = listPodResources(ctx, o.socket); err != nil {
		return err
	}
	rows := debugMappingRows(ctx, entries, src, resolver, netdevExists)
	if err := writeDebugMappings(stdout, o.output, rows); err != nil {
		return err
	}
	problems := 0
	for _, r := range rows {
		if r.Error != "" {
			problems++
		}
	}
	if problems > 0 {
		return fmt.Errorf("%d attachment problem(s), listed above", problems)
	}
	return nil
}

func debugMappingRows(ctx context.Context, entries []*podresourcesv1.PodResources, src debugMappingsSource,
	resolver sriov.Resolver, netdevExists func(string) (bool, error),
) []debugMapping {
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].GetNamespace() != entries[j].GetNamespace() {
			return entries[i].GetNamespace() < entries[j].GetNamespace()
		}
		return entries[i].GetName() < entries[j].GetName()
	})
	mapper := podresources.NewMapper()
	var rows []debugMapping
	for _, entry := range entries {
		name := entry.GetNamespace() + "/" + entry.GetName()
		pod, err := src.pod(ctx, entry.GetNamespace(), entry.GetName())
		if errors.Is(err, errDebugNotFound) && !debugHoldsDevices(entry) {
			continue // a pod without devices that the files leave out: nothing to map
		}
		if err != nil {
			rows = append(rows, debugMapping{Pod: name, Error: err.Error()})
			continue
		}
		lookup := func(ns, n string) (*nadv1.NetworkAttachmentDefinition, error) { return src.nad(ctx, ns, n) }
		atts, err := mapper.Map(pod, lookup, entry)
		if err != nil {
			rows = append(rows, debugMapping{Pod: name, Error: err.Error()})
			continue
		}
		for _, a := range atts {
			row := debugMapping{Pod: name, Network: a.Network(), Interface: a.Interface, Resource: a.ResourceName, VFPCI: a.DeviceID}
			vf, err := resolver.Resolve(a.DeviceID)
			if errors.Is(err, errNotResolvedOffline) {
				row.unresolved = true
				rows = append(rows, row)
				continue
			}
			if err != nil {
				row.Error = err.Error()
				rows = append(rows, row)
				continue
			}
			row.PFPCI, row.Uplink, row.Representor = vf.PFPCIAddress, vf.Uplink, vf.Representor
			row.VFIndex = &vf.Index
			row.RepresentorExists, err = netdevExists(vf.Representor)
			if err != nil {
				row.Error = err.Error()
			} else if !row.RepresentorExists {
				row.Error = fmt.Sprintf("representor %s of VF %s is in sysfs but not a netdev in this network namespace", vf.Representor, vf.PCIAddress)
			}
			rows = append(rows, row)
		}
	}
	return rows
}

func debugHoldsDevices(entry *podresourcesv1.PodResources) bool {
	for _, c := range entry.GetContainers() {
		for _, d := range c.GetDevices() {
			if len(d.GetDeviceIds()) > 0 {
				return true
			}
		}
	}
	return false
}

func writeDebugMappings(w io.Writer, format string, rows []debugMapping) error {
	if rows == nil {
		rows = []debugMapping{}
	}
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	case "yaml":
		out, err := yaml.Marshal(rows)
		if err != nil {
			return err
		}
		_, err = w.Write(out)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	out := &debugTableWriter{w: tw}
	out.printf("POD\tNETWORK\tINTERFACE\tRESOURCE\tVF PCI\tPF PCI\tUPLINK\tVF\tREPRESENTOR\tEXISTS\n")
	var problems []string
	for _, r := range rows {
		if r.Network == "" {
			problems = append(problems, r.Error) // pod-level errors name the pod
			continue
		}
		index, exists := "-", "no"
		if r.VFIndex != nil {
			index = strconv.Itoa(*r.VFIndex)
		}
		if r.RepresentorExists {
			exists = "yes"
		} else if r.unresolved {
			exists = "-"
		}
		if r.Error != "" {
			problems = append(problems, r.Pod+" "+r.Network+"@"+r.Interface+": "+r.Error)
		}
		out.printf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Pod, r.Network, r.Interface, r.Resource,
			r.VFPCI, dash(r.PFPCI), dash(r.Uplink), index, dash(r.Representor), exists)
	}
	if out.err != nil {
		return out.err
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	out.w = w
	if len(problems) > 0 {
		out.printf("\nPROBLEMS\n")
		for _, p := range problems {
			out.printf("  %s\n", p)
		}
	}
	return out.err
}

// debugTableWriter keeps the first write error, so the table code reads as
// a table.
type debugTableWriter struct {
	w   io.Writer
	err error
}

func (t *debugTableWriter) printf(format string, args ...any) {
	if t.err == nil {
		_, t.err = fmt.Fprintf(t.w, format, args...)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// debugAPISource reads pods and NADs from the API server, one GET each
// (NADs memoized): the command looks at one node's pods, not the cluster.
type debugAPISource struct {
	kube kubernetes.Interface
	nads nadclient.Interface
	memo map[string]*nadv1.NetworkAttachmentDefinition
}

func newDebugAPISource(kubeconfig string) (*debugAPISource, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("API server config (--kubeconfig, $KUBECONFIG or in-cluster; or use --offline -f): %w", err)
	}
	// One GET per pod of the node (up to ~110): client-go's default 5 qps
	// would make that take 20 seconds.
	cfg.QPS, cfg.Burst = 50, 100
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	nads, err := nadclient.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &debugAPISource{kube: kube, nads: nads, memo: map[string]*nadv1.NetworkAttachmentDefinition{}}, nil
}

func (s *debugAPISource) pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	p, err := s.kube.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("pod %s/%s: %w in the API server", namespace, name, errDebugNotFound)
		}
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	return p, nil
}

func (s *debugAPISource) nad(ctx context.Context, namespace, name string) (*nadv1.NetworkAttachmentDefinition, error) {
	key := namespace + "/" + name
	if n, ok := s.memo[key]; ok {
		return n, nil
	}
	n, err := s.nads.K8sCniCncfIoV1().NetworkAttachmentDefinitions(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get NetworkAttachmentDefinition %s: %w", key, err)
	}
	s.memo[key] = n
	return n, nil
}

func isNotFound(err error) bool {
	var status interface{ Status() metav1.Status }
	return errors.As(err, &status) && status.Status().Reason == metav1.StatusReasonNotFound
}

// debugManifests holds the pods and NADs read from files for --offline.
type debugManifests struct {
	pods map[string]*corev1.Pod
	nads map[string]*nadv1.NetworkAttachmentDefinition
}

func (m *debugManifests) pod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	if p, ok := m.pods[namespace+"/"+name]; ok {
		return p, nil
	}
	return nil, fmt.Errorf("pod %s/%s: %w in the -f files", namespace, name, errDebugNotFound)
}

func (m *debugManifests) nad(_ context.Context, namespace, name string) (*nadv1.NetworkAttachmentDefinition, error) {
	if n, ok := m.nads[namespace+"/"+name]; ok {
		return n, nil
	}
	return nil, fmt.Errorf("NetworkAttachmentDefinition %s/%s not found in the -f files", namespace, name)
}

// loadDebugManifests reads Pods and NetworkAttachmentDefinitions from
// multi-document YAML or JSON files; List kinds are unpacked, other kinds
// ignored (the same files may feed render).
func loadDebugManifests(files []string) (*debugManifests, error) {
	m := &debugManifests{pods: map[string]*corev1.Pod{}, nads: map[string]*nadv1.NetworkAttachmentDefinition{}}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		dec := k8syaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for doc := 1; ; doc++ {
			var obj unstructured.Unstructured
			if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return nil, fmt.Errorf("%s: document %d: %w", file, doc, err)
			}
			if obj.Object == nil {
				continue
			}
			if err := m.add(&obj, fmt.Sprintf("%s: document %d", file, doc)); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *debugManifests) add(obj *unstructured.Unstructured, where string) error {
	if obj.IsList() {
		return obj.EachListItem(func(item runtime.Object) error {
			return m.add(item.(*unstructured.Unstructured), where)
		})
	}
	key := obj.GetNamespace() + "/" + obj.GetName()
	if obj.GetNamespace() == "" {
		key = "default/" + obj.GetName()
	}
	switch gvk := obj.GroupVersionKind(); {
	case gvk.Group == "" && gvk.Kind == "Pod":
		var p corev1.Pod
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, &p); err != nil {
			return fmt.Errorf("%s: Pod %s: %w", where, key, err)
		}
		if p.Namespace == "" {
			p.Namespace = "default"
		}
		m.pods[key] = &p
	case gvk.Group == nadv1.SchemeGroupVersion.Group && gvk.Kind == "NetworkAttachmentDefinition":
		var n nadv1.NetworkAttachmentDefinition
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, &n); err != nil {
			return fmt.Errorf("%s: NetworkAttachmentDefinition %s: %w", where, key, err)
		}
		if n.Namespace == "" {
			n.Namespace = "default"
		}
		m.nads[key] = &n
	case obj.GetKind() == "":
		return fmt.Errorf("%s: object without kind", where)
	}
	return nil
}
