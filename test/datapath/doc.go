// Package datapath builds network topologies and sends real packets through
// them, for tests that run inside the kernel test bed (hack/kernel, `make
// test-kernel`): a Linux kernel with flower, gact, ct, veth, bridge, 8021q,
// SCTP and netdevsim built in, where the tests run as root.
//
// # Topology
//
// A Topology is what accelerated-bridge-cni builds on an SR-IOV switchdev
// node, in software: a Linux bridge, and per pod a network namespace holding
// the VF end of a veth pair whose host end, the "representor", is a bridge
// port. TC rules installed on a representor therefore see the traffic a
// hardware representor would: its ingress hook is what the pod sends, its
// egress hook what the pod receives — with one difference: a software
// bridge walks the destination's egress hook, a hardware-offloaded bridge
// does not (see docs/kernel-test-bed.md, "Placement suites").
//
//	topo := datapath.NewTopology(t, datapath.Options{})
//	a := topo.AddPod(t, "a", datapath.PodOptions{})
//	b := topo.AddPod(t, "b", datapath.PodOptions{})
//	// a.Rep and b.Rep are the representors; a.IPv4, a.IPv6 its addresses.
//
// # Uplink and remote pods
//
// The pods of other nodes are behind the uplink, as on an SR-IOV node the
// rest of the network is behind the PF's uplink representor:
//
//	r := topo.AddRemotePod(t, "r", datapath.PodOptions{}) // creates the uplink on first use
//	up := topo.Uplink() // up.Dev "up-br0" is the bridge port, up.NSName "out-br0" the outside
//
// The uplink is a veth pair: up-<bridge> on the bridge, eth0 in the
// outside namespace out-<bridge>. A remote pod is a macvlan (bridge mode)
// of that eth0, so it has its own MAC on the outside wire, moved into a
// namespace of its own (named after the pod, the macvlan called eth0 there)
// so that probes, servers and raw sockets treat it like a local pod. It
// takes the next addresses of the same subnets (one network across nodes),
// has Remote set and no representor. The uplink is untagged. LocalPods
// lists the pods with a representor, what a tcdriver.Bridge's ports are.
//
// With Options.VLANFiltering the bridge filters VLANs and each pod can be an
// access port (PodOptions.VLAN: PVID, untagged) or a trunk
// (PodOptions.Trunk: tagged VLANs, the pod's addresses on eth0.<Trunk[0]>).
// IPv6 addresses are added with nodad, so they are usable at once.
//
// # Probes
//
// "Is pod A → pod B TCP/80 allowed?" is one line:
//
//	if a.Probe(b.IPv4, datapath.TCP, 80).Delivered { ... }
//	a.Expect(t, b.IPv6, datapath.SCTP, 5000, datapath.Dropped)
//
// Probe starts a server on the pod that owns the address if it has none on
// that port (explicitly: b.Serve(t, datapath.UDP, 53)), then, from inside
// A's namespace, sends a unique token and waits, at most Options.Timeout, for
// the echo. TCP and SCTP connect, send the token and read the echo; UDP
// sends a datagram and reads the reply; ICMP sends an echo request (ICMPv6
// for IPv6 addresses) and waits for the matching reply. Result.Delivered
// says whether the reply came back; Result.Reached whether our server read
// the token (so a test can tell a dropped request from a dropped reply);
// Result.Err why not. Everything is Go: no nc or ping in the bed.
//
// # netdevsim
//
// NewEswitch creates a netdevsim device in switchdev mode with N VFs; its
// Representors are found, as the agent finds them on real hardware, by
// phys_switch_id and phys_port_name (pf0vfN).
//
// # Port backends
//
// By default a pod's port is a veth pair. With Options.PF, or for every
// topology of the process with -mnptc.pf / $MNPTC_HARDWARE_PF (see
// SwitchdevPF), it is a VF of that switchdev PF and the representor is the
// bridge port; the uplink is a VF too. On a real PF the VF's netdev is the
// pod's eth0; on netdevsim ("netdevsim" makes a device) eth0 is a veth
// wired to the representor with act_mirred. A PF with VFs in use is
// refused (VFUse.InUse), and the PF is restored when its last topology
// ends. The conformance run (docs/kernel-test-bed.md) records in_hw with
// RecordOffload and reports with WriteConformanceReport.
//
// # Network namespaces
//
// Do runs a function inside a namespace on a locked OS thread and restores
// the thread's namespace afterwards (a thread it cannot restore is never
// returned to the Go scheduler). Sockets keep the namespace they were created
// in, so listeners created through Do serve from any goroutine.
//
// All helpers are for tests: they take a testing.TB, fail it on setup errors,
// and register cleanups. RequireBed fails a test that is not running inside
// the bed (or another disposable kernel marked with KERNEL_TEST_BED=1), so
// that a `go test -tags kernel` on a workstation never rewires its network.
package datapath
