// Package preflight tells, for each PF whose VFs pods get, whether the TC
// filters the agent installs there can be enforced in the NIC: it reads the
// eswitch mode and the flow steering mode (devlink), hw-tc-offload on the
// uplink and on every VF representor (ethtool features over netlink), the
// PF's driver, its VFs and their representors (sysfs), the bridge the
// representors are ports of and that bridge's offloaded FDB entries
// (rtnetlink), and the running kernel with the capability profile it
// selects (tcdriver.ParseProfile), and gives one Verdict per PF with the
// command that fixes each problem.
//
// Detected, read from the kernel: everything listed above. Inferred: that
// mlx5 offloads the bridge. The kernel has no switch saying "bridge offload
// on"; mlx5 (Linux 5.14+, esw/bridge.c) offloads a Linux bridge as soon as
// representors of a switchdev eswitch are enslaved to it, so the preflight
// infers it from driver, mode, kernel and the representors' master, and
// corroborates it with the bridge's FDB entries that carry NTF_OFFLOADED
// (set when the driver acknowledged an entry into the hardware FDB). A
// bridge that has learned nothing yet has no such entry: "expected" then,
// not "active".
//
// Inspect is pure assembly over Host, the node's edge: System reads the
// real node, Fake is a stateful stand-in over a temporary sysfs tree for
// unit tests, so both run the same sysfs code.
package preflight
