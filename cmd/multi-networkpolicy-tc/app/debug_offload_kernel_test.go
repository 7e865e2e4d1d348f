//go:build kernel

package app

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/preflight"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

func hasProblem(p preflight.PF, v preflight.Verdict, reason string) bool {
	return slices.ContainsFunc(p.Problems, func(pr preflight.Problem) bool {
		return pr.Verdict == v && strings.Contains(pr.Reason, reason)
	})
}

// TestKernelDebugOffload runs the real preflight Host (sysfs, devlink,
// ethtool netlink, bridge FDB dump) against netdevsim's switchdev eswitch
// with its representors on a Linux bridge and against a veth pair: both
// come out "software only", with the reasons; a netdevsim eswitch in
// legacy mode comes out "cannot enforce" until the printed fix is applied.
// It prints `debug offload` as the command shows it.
func TestKernelDebugOffload(t *testing.T) {
	datapath.RequireBed(t)
	ctx := context.Background()
	esw := datapath.NewEswitch(t, 42, 2)
	reps, err := esw.Representors()
	if err != nil || len(reps) != 2 {
		t.Fatalf("representors %v: %v", reps, err)
	}
	datapath.Run(t, "ip", "link", "add", "brpf0", "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", "brpf0").Run() })
	for _, r := range reps {
		datapath.Run(t, "ip", "link", "set", r.Name, "master", "brpf0")
		datapath.Run(t, "ip", "link", "set", r.Name, "up")
	}
	datapath.Run(t, "ip", "link", "set", "brpf0", "up")
	datapath.Run(t, "ip", "link", "add", "brpf1", "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", "brpf1").Run() })
	datapath.Run(t, "ip", "link", "add", "vpf0", "type", "veth", "peer", "name", "vpf0p")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", "vpf0").Run() })
	datapath.Run(t, "ip", "link", "set", "vpf0", "master", "brpf1")

	r := preflight.Inspect(ctx, preflight.NewSystem(), []string{esw.Uplink, "vpf0"}, preflightOptions("auto", "auto"))
	if err := r.Err(); err != nil {
		t.Fatalf("preflight errors: %v", err)
	}
	if r.Kernel == "" || r.Profile == "" {
		t.Errorf("kernel %q profile %q", r.Kernel, r.Profile)
	}
	nsim, veth := r.PFs[0], r.PFs[1]
	t.Logf("netdevsim: %+v", nsim)
	t.Logf("veth: %+v", veth)
	if nsim.Verdict != preflight.SoftwareOnly || !hasProblem(nsim, preflight.SoftwareOnly, "driver netdevsim models a switchdev eswitch but offloads no flower filter") {
		t.Errorf("netdevsim: verdict %q, problems %+v", nsim.Verdict, nsim.Problems)
	}
	if nsim.Devlink != esw.DevlinkDevice() || nsim.Driver != "netdevsim" || nsim.EswitchMode != "switchdev" || nsim.FlowSteeringMode != "n/a" ||
		nsim.VFs != 2 || len(nsim.Representors) != 2 || nsim.Bridge != "brpf0" || nsim.BridgeOffload != "no" {
		t.Errorf("netdevsim facts: %+v", nsim)
	}
	for _, p := range append([]preflight.Port{nsim.Uplink}, nsim.Representors...) {
		if p.HWTCOffload == "unknown" {
			t.Errorf("hw-tc-offload of %s not read over ethtool netlink", p.Netdev)
		}
	}
	for _, n := range nsim.Notes {
		if strings.Contains(n, "unknown") {
			t.Errorf("netdevsim note: %s", n)
		}
	}
	if veth.Verdict != preflight.SoftwareOnly || !hasProblem(veth, preflight.SoftwareOnly, "vpf0 is a veth netdev, not a NIC port") {
		t.Errorf("veth: verdict %q, problems %+v", veth.Verdict, veth.Problems)
	}
	if veth.Driver != "veth" || veth.EswitchMode != "n/a" || veth.Bridge != "brpf1" || veth.Uplink.HWTCOffload == "unknown" {
		t.Errorf("veth facts: %+v", veth)
	}
	if slices.ContainsFunc(append(nsim.Problems, veth.Problems...), func(p preflight.Problem) bool { return p.Verdict == preflight.CannotEnforce }) {
		t.Errorf("cannot-enforce problems on a switchdev eswitch or a veth: %+v %+v", nsim.Problems, veth.Problems)
	}

	// The command, as an operator runs it.
	out, stderr, code := runCLI(t, "debug", "offload", "--pf", esw.Uplink, "--pf", "vpf0")
	t.Logf("multi-networkpolicy-tc debug offload --pf %s --pf vpf0 (exit %d)\n%s%s", esw.Uplink, code, out, stderr)
	if code != exitNotInHardware || strings.Count(out, string(preflight.SoftwareOnly)) < 2 {
		t.Errorf("exit %d, want %d with both PFs software only", code, exitNotInHardware)
	}
	js, _, _ := runCLI(t, "debug", "offload", "--pf", esw.Uplink, "--pf", "vpf0", "-o", "json")
	var got preflight.Report
	if err := json.Unmarshal([]byte(js), &got); err != nil || len(got.PFs) != 2 || got.PFs[0].Verdict != preflight.SoftwareOnly || got.PFs[1].Verdict != preflight.SoftwareOnly {
		t.Errorf("-o json: %v\n%s", err, js)
	}
}

// TestKernelDebugOffloadLegacy: a netdevsim eswitch left in legacy mode
// has no representors: "cannot enforce", with the devlink command that
// fixes it; once that is done (over devlink, as the command would) it is
// "software only", netdevsim offloading nothing.
func TestKernelDebugOffloadLegacy(t *testing.T) {
	datapath.RequireBed(t)
	const id = 43
	if err := os.WriteFile("/sys/bus/netdevsim/new_device", []byte(fmt.Sprintf("%d 1", id)), 0o200); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile("/sys/bus/netdevsim/del_device", []byte(fmt.Sprint(id)), 0o200); err != nil {
			t.Errorf("delete netdevsim%d: %v", id, err)
		}
	})
	dev := fmt.Sprintf("/sys/bus/netdevsim/devices/netdevsim%d", id)
	if err := os.WriteFile(filepath.Join(dev, "sriov_numvfs"), []byte("2"), 0o200); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Join(dev, "net"))
	if err != nil || len(ents) != 1 {
		t.Fatalf("netdevs of netdevsim%d: %v %v", id, ents, err)
	}
	uplink := ents[0].Name()
	r := preflight.Inspect(context.Background(), preflight.NewSystem(), []string{uplink}, preflight.Options{})
	p := r.PFs[0]
	fix := fmt.Sprintf("devlink dev eswitch set netdevsim/netdevsim%d mode switchdev", id)
	if p.Verdict != preflight.CannotEnforce || p.EswitchMode != "legacy" || !slices.Contains(p.Fixes(), fix) ||
		!hasProblem(p, preflight.CannotEnforce, "is in legacy mode: its VFs have no representors") {
		t.Errorf("legacy: %+v", p)
	}
	out, _, code := runCLI(t, "debug", "offload", "--pf", uplink)
	t.Logf("multi-networkpolicy-tc debug offload --pf %s (legacy mode; exit %d)\n%s", uplink, code, out)
	if code != exitNotInHardware || !strings.Contains(out, "fix: "+fix) {
		t.Errorf("exit %d, want %d and the fix", code, exitNotInHardware)
	}

	dl, err := netlink.DevLinkGetDeviceByName("netdevsim", fmt.Sprintf("netdevsim%d", id))
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.DevLinkSetEswitchMode(dl, "switchdev"); err != nil {
		t.Fatal(err)
	}
	p = preflight.Inspect(context.Background(), preflight.NewSystem(), []string{uplink}, preflight.Options{}).PFs[0]
	if p.Verdict != preflight.SoftwareOnly || p.EswitchMode != "switchdev" || len(p.Representors) != 2 ||
		hasProblem(p, preflight.CannotEnforce, "") {
		t.Errorf("after the fix: %+v", p)
	}
}
