package app

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strings"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
	nadutils "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/utils"
	corev1 "k8s.io/api/core/v1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
)

// errNoMAC is wrapped when neither source knows a VF's MAC.
var errNoMAC = errors.New("no MAC address known")

// statusMAC returns the mac that the pod's network-status annotation
// (written by multus from the CNI result; accelerated-bridge-cni reports
// the VF's address there) gives for the interface iface of network ref:
// nil when it gives none, an error when the annotation or the address does
// not parse.
func statusMAC(pod *corev1.Pod, ref policy.NetworkRef, iface string) (net.HardwareAddr, error) {
	if pod == nil || pod.Annotations[nadv1.NetworkStatusAnnot] == "" {
		return nil, nil
	}
	field := "metadata.annotations[" + nadv1.NetworkStatusAnnot + "]"
	statuses, err := nadutils.GetNetworkStatus(pod)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	for i, st := range statuses {
		if st.Default || st.Interface != iface {
			continue
		}
		if r, err := policy.ParseNetworkRef(st.Name, pod.Namespace); err != nil || r != ref {
			continue
		}
		if st.Mac == "" {
			return nil, nil
		}
		mac, err := net.ParseMAC(st.Mac)
		if err != nil || len(mac) != 6 {
			return nil, fmt.Errorf("%s[%d].mac %q: not an Ethernet MAC address", field, i, st.Mac)
		}
		return mac, nil
	}
	return nil, nil
}

// vfMAC chooses the MAC the bridge placement dispatches a VF's ingress on.
//
// The PF's report of the VF (IFLA_VF_MAC) comes first: it is kernel state
// that the CNI set before the VF entered the pod, that the pod's users
// cannot write, and that the eswitch enforces as the VF's source address
// when spoof checking is on. The pod's network-status is the fallback for a
// VF whose MAC was not set administratively (the PF reports all zeros):
// accelerated-bridge-cni reports the address the VF has in the pod. Anyone
// who may update the pod can edit that annotation, so when both sources
// give an address they must agree; a disagreement, or an address that does
// not parse, is an error and the VF is closed (fail closed), never
// dispatched on a guess.
func vfMAC(topo sriov.Topology, vf sriov.VF, pod *corev1.Pod, ref policy.NetworkRef, iface string) (net.HardwareAddr, string, error) {
	var kernel net.HardwareAddr
	var kerr error
	if topo != nil {
		kernel, kerr = topo.VFMAC(vf)
	}
	status, serr := statusMAC(pod, ref, iface)
	switch {
	case serr != nil:
		return nil, "", serr
	case kernel != nil && status != nil && !bytes.Equal(kernel, status):
		return nil, "", fmt.Errorf("the PF reports MAC %s for VF %s but metadata.annotations[%s] gives %s for interface %s", kernel, vf.PCIAddress, nadv1.NetworkStatusAnnot, status, iface)
	case kernel != nil:
		return kernel, "PF (IFLA_VF_MAC)", nil
	case status != nil:
		return status, "network-status", nil
	case kerr != nil:
		return nil, "", fmt.Errorf("%w: %w", errNoMAC, kerr)
	}
	return nil, "", fmt.Errorf("%w: the PF reports none for VF %s and metadata.annotations[%s] has no mac for interface %q", errNoMAC, vf.PCIAddress, nadv1.NetworkStatusAnnot, iface)
}

// deviceInterface is the pod interface of the i-th VF of an attachment
// (Interface lists them comma-separated, in the order of its devices).
func deviceInterface(att policy.Attachment, i int) string {
	ifs := strings.Split(att.Interface, ",")
	if i < len(ifs) {
		return ifs[i]
	}
	return ""
}
