package datapath

import (
	"flag"
	"os"
	"testing"
)

// PFEnv names the environment variable that selects the switchdev port
// backend for every Topology of the process: the uplink netdev of an SR-IOV
// PF ("ens1f0np0"), or "netdevsim" for a netdevsim device created for the
// purpose (the kernel test bed). Unset, pods are veth pairs.
const PFEnv = "MNPTC_HARDWARE_PF"

// NetdevsimPF is the PF value that makes the backend create a netdevsim
// device and use it as the PF.
const NetdevsimPF = "netdevsim"

// pfFlag is PFEnv as a test flag, for compiled test binaries run without a
// shell (the DaemonSet's image): -mnptc.pf=ens1f0np0. It wins over PFEnv.
// podResourcesFlag is PodResourcesEnv's. Test binaries only: the commands
// that use this package (test/sandbox/demo) do not grow these flags.
var pfFlag, podResourcesFlag *string

func init() {
	if testing.Testing() {
		pfFlag = flag.String("mnptc.pf", "", "run the datapath topologies on the VFs of this switchdev PF (uplink netdev), or on a netdevsim device with \"netdevsim\"; default $"+PFEnv+", else veth pairs")
		podResourcesFlag = flag.String("mnptc.podresources", "", "the kubelet's pod-resources socket, asked which VFs are allocated to pods (default $"+PodResourcesEnv+", else the kubelet's standard path, also under /host)")
	}
}

// flagValue is the value of a flag of this package, "" when unset or not
// registered.
func flagValue(f *string) string {
	if f == nil || !flag.Parsed() {
		return ""
	}
	return *f
}

// SwitchdevPF returns the PF the process's topologies are built on
// (-mnptc.pf, else $MNPTC_HARDWARE_PF), "" for the veth backend.
func SwitchdevPF() string {
	if v := flagValue(pfFlag); v != "" {
		return v
	}
	return os.Getenv(PFEnv)
}
