package datapath

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/podresources"
)

// PodResourcesEnv names the kubelet's pod-resources socket the run asks
// which VFs are allocated to pods (-mnptc.podresources wins). Default: the
// kubelet's standard path, on the node or under /host (kubectl debug
// node mounts the node's / there); none of them: not checked.
const PodResourcesEnv = "MNPTC_PODRESOURCES_SOCKET"

var defaultPodResourcesSockets = []string{"/var/lib/kubelet/pod-resources/kubelet.sock", "/host/var/lib/kubelet/pod-resources/kubelet.sock"}

func podResourcesSocket() string {
	if v := flagValue(podResourcesFlag); v != "" {
		return v
	}
	if s := os.Getenv(PodResourcesEnv); s != "" {
		return s
	}
	for _, s := range defaultPodResourcesSockets {
		if podresources.CheckSocket(s) == nil {
			return s
		}
	}
	return ""
}

// kubeletDevices asks the kubelet which device IDs (a VF's PCI address for
// the SR-IOV device plugin) are allocated to which pods, and which it may
// hand out. ok is false when there is no kubelet to ask; an error means
// there is one and it did not answer (the run then refuses: fail closed).
func kubeletDevices(ctx context.Context) (allocated map[string][]string, allocatable map[string]bool, socket string, ok bool, err error) {
	socket = podResourcesSocket()
	if socket == "" {
		return nil, nil, "", false, nil
	}
	if err := podresources.CheckSocket(socket); err != nil {
		return nil, nil, socket, false, err
	}
	c, err := podresources.New(socket, podresources.Options{})
	if err != nil {
		return nil, nil, socket, false, err
	}
	defer func() { _ = c.Close() }()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	pods, err := c.List(ctx)
	if err != nil {
		return nil, nil, socket, false, fmt.Errorf("ask the kubelet (%s) which devices pods hold: %w", socket, err)
	}
	allocated = map[string][]string{}
	for _, p := range pods {
		for _, ctr := range p.GetContainers() {
			for _, d := range ctr.GetDevices() {
				for _, id := range d.GetDeviceIds() {
					allocated[id] = append(allocated[id], p.GetNamespace()+"/"+p.GetName())
				}
			}
		}
	}
	allocatable = map[string]bool{}
	if res, err := c.GetAllocatableResources(ctx); err == nil {
		for _, d := range res.GetDevices() {
			for _, id := range d.GetDeviceIds() {
				allocatable[id] = true
			}
		}
	}
	return allocated, allocatable, socket, true, nil
}

// kubeletNote checks the PF's VFs against the kubelet: it fills each use's
// AllocatedTo and says, for the report, what was checked and whether the
// kubelet may hand out one of the VFs during the run.
func kubeletNote(uses []VFUse) (string, error) {
	allocated, allocatable, socket, ok, err := kubeletDevices(context.Background())
	if err != nil {
		return "", err
	}
	if !ok {
		return "not checked (no pod-resources socket; -mnptc.podresources=PATH)", nil
	}
	var offered []string
	for i := range uses {
		u := &uses[i]
		if u.PCI == "" {
			continue
		}
		u.AllocatedTo = append(u.AllocatedTo, allocated[u.PCI]...)
		sort.Strings(u.AllocatedTo)
		if allocatable[u.PCI] {
			offered = append(offered, u.PCI)
		}
	}
	note := "no VF of the PF allocated to a pod (" + socket + ")"
	if len(offered) > 0 {
		note += "; the kubelet may hand out " + strings.Join(offered, ", ") + " during the run: cordon the node"
	}
	return note, nil
}
