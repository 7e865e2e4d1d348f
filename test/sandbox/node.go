package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	deviceplugin "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov/sriovtest"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/kubeletsim"
)

// Where the node's kubelet sockets live, as on a real node.
const (
	PodResourcesSocket = "/var/lib/kubelet/pod-resources/kubelet.sock"
	ResourcePrefix     = "mellanox.com"
	// Bridge is the bridge the representors are attached to, as
	// accelerated-bridge-cni's "bridge" setting names it.
	Bridge = "br0"
	// OutsideBridge is the bridge, in each PF's outside namespace, that
	// stands for the switch the PF's wire goes to: the uplink's far end and
	// every remote pod of that PF's network are its ports.
	OutsideBridge = "ext"
	// outsideWire is the uplink veth's far end, in the outside namespace.
	outsideWire = "wire"
)

// OutsideNamespace names the network namespace standing for the rest of the
// network behind PF pf's uplink (/run/netns/outside-p<pf>).
func OutsideNamespace(pf int) string { return fmt.Sprintf("outside-p%d", pf) }

// resourcePF is the PF each device-plugin resource of devicePluginConfig
// takes its VFs from, so a remote pod of a network is placed behind the
// uplink its local pods' VFs share.
var resourcePF = map[string]int{ResourcePrefix + "/cx6dx_p0": 0, ResourcePrefix + "/cx6dx_p1": 1}

// NIC is the sandbox's adapter: a dual-port ConnectX-6 Dx in switchdev mode
// with 8 VFs on PF0 (resource mellanox.com/cx6dx_p0, selected by PF name)
// and 4 on PF1 (mellanox.com/cx6dx_p1, selected by PCI address), named as
// udev names them on a slot-1 card.
func NIC() sriovtest.NIC {
	pf := func(port int, switchID string, vfs int) sriovtest.PF {
		p := sriovtest.PF{
			PCI:      fmt.Sprintf("0000:3b:00.%d", port),
			Uplink:   fmt.Sprintf("ens1f%dnp%d", port, port),
			SwitchID: switchID,
			TotalVFs: 8,
		}
		for i := range vfs {
			// Functions 2-7 of device 00 (port 0) or 08 (port 1), then device +1.
			dev, fn := port*8+(i+2)/8, (i+2)%8
			p.VFs = append(p.VFs, sriovtest.VF{
				PCI:         fmt.Sprintf("0000:3b:%02x.%d", dev, fn),
				Netdev:      fmt.Sprintf("ens1f%dv%d", port, i),
				Representor: fmt.Sprintf("ens1f%dnpf%dvf%d", port, port, i),
			})
		}
		return p
	}
	return sriovtest.NIC{PFs: []sriovtest.PF{pf(0, "b8cef60300a1b2c3", 8), pf(1, "b8cef60300a1b2c4", 4)}}
}

const devicePluginConfig = `{
  "resourceList": [
    {"resourceName": "cx6dx_p0",
     "selectors": {"vendors": ["15b3"], "devices": ["101e"], "drivers": ["mlx5_core"], "pfNames": ["ens1f0np0"]}},
    {"resourceName": "cx6dx_p1",
     "selectors": {"vendors": ["15b3"], "devices": ["101e"], "pciAddresses": ["0000:3b:08.2", "0000:3b:08.3", "0000:3b:08.4", "0000:3b:08.5"]}}
  ]
}
`

// vf locates one VF of the fake NIC.
type vf struct {
	pci, netdev, rep string
}

// Node is the node's side of the sandbox: the fake NIC's sysfs tree mounted
// over /sys, its VF ↔ representor veth pairs and the bridge, each PF's
// uplink on the bridge wired to an outside namespace (remote pods), the kubelet
// simulator (device-plugin Registration + PodResources) and the real SR-IOV
// device plugin. It rewires the kernel it runs on: run it only in the
// kernel test bed.
type Node struct {
	dir     string
	nic     sriovtest.NIC
	root    string
	vfs     map[string]vf // by PCI address
	podRes  *kubeletsim.PodResources
	stopPR  func()
	kubelet *kubeletsim.Kubelet
	dp      *exec.Cmd
	dpDone  chan struct{}
	// outside[i] is PF i's outside namespace (OutsideNamespace(i)).
	outside []netns.NsHandle
}

// StartNode lays down the fake NIC and starts the kubelet simulator and the
// device plugin (binary dpBinary), then waits for the VFs to be advertised.
func StartNode(ctx context.Context, dir, dpBinary string, say func(string, ...any)) (*Node, error) {
	n := &Node{dir: dir, nic: NIC(), root: filepath.Join(dir, "root"), vfs: map[string]vf{}}
	say("fake ConnectX-6 Dx: sysfs tree (2 PFs in switchdev mode, %d+%d VFs) bind-mounted over /sys",
		len(n.nic.PFs[0].VFs), len(n.nic.PFs[1].VFs))
	if err := n.nic.Write(n.root); err != nil {
		return nil, fmt.Errorf("write fake sysfs: %w", err)
	}
	if err := syscall.Mount(filepath.Join(n.root, "sys"), "/sys", "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return nil, fmt.Errorf("bind-mount fake sysfs over /sys: %w", err)
	}
	// The bed's root is read-only: the kubelet's and the CNI's state go on
	// a tmpfs /var (keeping /var/run -> /run).
	if err := syscall.Mount("tmpfs", "/var", "tmpfs", 0, "mode=0755"); err != nil {
		return nil, fmt.Errorf("tmpfs on /var: %w", err)
	}
	_ = os.Symlink("../run", "/var/run")
	for _, d := range []string{"/var/lib/kubelet/pod-resources", deviceplugin.DevicePluginPath, "/run/k8s.cni.cncf.io"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}

	say("netdevs: bridge %s; one veth pair per VF (VF netdev <-> representor); each PF's uplink a veth on %s whose far end is in namespace %s, %s (bridge %s: remote pods)",
		Bridge, Bridge, OutsideNamespace(0), OutsideNamespace(1), OutsideBridge)
	if err := n.createNetdevs(); err != nil {
		return nil, err
	}

	say("kubelet simulator: device-plugin Registration on %s, PodResources on %s",
		filepath.Join(deviceplugin.DevicePluginPath, "kubelet.sock"), PodResourcesSocket)
	n.podRes = kubeletsim.NewPodResources()
	var err error
	if n.stopPR, err = n.podRes.Serve(PodResourcesSocket); err != nil {
		return nil, err
	}
	n.kubelet = kubeletsim.NewKubelet(deviceplugin.DevicePluginPath, n.podRes)
	if err := n.kubelet.Start(); err != nil {
		n.Stop()
		return nil, err
	}

	say("SR-IOV device plugin %s (resources %s/cx6dx_p0 by PF name, %s/cx6dx_p1 by PCI address)",
		filepath.Base(dpBinary), ResourcePrefix, ResourcePrefix)
	if err := n.startDevicePlugin(dpBinary); err != nil {
		n.Stop()
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for res, want := range map[string]int{ResourcePrefix + "/cx6dx_p0": len(n.nic.PFs[0].VFs), ResourcePrefix + "/cx6dx_p1": len(n.nic.PFs[1].VFs)} {
		if _, err := n.kubelet.WaitForDevices(wctx, res, want); err != nil {
			n.Stop()
			return nil, fmt.Errorf("device plugin: %w\n%s", err, tail(filepath.Join(dir, "sriovdp.log")))
		}
	}
	return n, nil
}

func (n *Node) createNetdevs() error {
	up := func(l netlink.Link) error {
		if err := netlink.LinkAdd(l); err != nil {
			return fmt.Errorf("create %s: %w", l.Attrs().Name, err)
		}
		link, err := netlink.LinkByName(l.Attrs().Name)
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(link)
	}
	off := false
	if err := up(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: Bridge}, MulticastSnooping: &off}); err != nil {
		return err
	}
	for i, pf := range n.nic.PFs {
		if err := n.createUplink(i, pf.Uplink); err != nil {
			return err
		}
		for _, v := range pf.VFs {
			n.vfs[v.PCI] = vf{pci: v.PCI, netdev: v.Netdev, rep: v.Representor}
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: v.Netdev}, PeerName: v.Representor}); err != nil {
				return fmt.Errorf("create VF %s <-> representor %s: %w", v.Netdev, v.Representor, err)
			}
		}
	}
	return nil
}

// createUplink wires PF pf's uplink as the wire of a switchdev NIC is: the
// uplink netdev (named as the fake sysfs names the PF's uplink
// representor, so sriovnet finds it) is a port of the bridge, and what
// goes out of it arrives in the outside namespace, on bridge
// OutsideBridge, where remote pods (AddRemote) are ports. Each PF has its
// own outside namespace: two uplinks of one bridge joined outside would
// be a loop.
func (n *Node) createUplink(pf int, uplink string) error {
	ns, err := datapath.NewNetns(OutsideNamespace(pf))
	if err != nil {
		return fmt.Errorf("PF %d outside namespace: %w", pf, err)
	}
	n.outside = append(n.outside, ns)
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: uplink}, PeerName: outsideWire,
		PeerNamespace: netlink.NsFd(int(ns))}); err != nil {
		return fmt.Errorf("create uplink %s <-> %s in %s: %w", uplink, outsideWire, OutsideNamespace(pf), err)
	}
	br, err := netlink.LinkByName(Bridge)
	if err != nil {
		return err
	}
	link, err := netlink.LinkByName(uplink)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("uplink %s on %s: %w", uplink, Bridge, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	off := false
	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: OutsideBridge}, MulticastSnooping: &off}); err != nil {
		return fmt.Errorf("bridge %s in %s: %w", OutsideBridge, OutsideNamespace(pf), err)
	}
	ext, err := h.LinkByName(OutsideBridge)
	if err != nil {
		return err
	}
	wire, err := h.LinkByName(outsideWire)
	if err != nil {
		return err
	}
	if err := h.LinkSetMaster(wire, ext); err != nil {
		return fmt.Errorf("%s on %s in %s: %w", outsideWire, OutsideBridge, OutsideNamespace(pf), err)
	}
	for _, l := range []netlink.Link{wire, ext} {
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	return nil
}

func (n *Node) startDevicePlugin(binary string) error {
	if err := os.MkdirAll(filepath.Join(n.root, "usr/share/misc"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.root, "usr/share/misc/pci.ids"), pciIDs, 0o644); err != nil {
		return err
	}
	config := filepath.Join(n.dir, "sriovdp-config.json")
	if err := os.WriteFile(config, []byte(devicePluginConfig), 0o644); err != nil {
		return err
	}
	log, err := os.Create(filepath.Join(n.dir, "sriovdp.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(binary, "-config-file", config, "-resource-prefix", ResourcePrefix, "-logtostderr", "-v", "2")
	cmd.Env = append(os.Environ(), "GHW_CHROOT="+n.root, "PCIDB_DISABLE_NETWORK_FETCH=1")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return fmt.Errorf("start %s: %w", binary, err)
	}
	n.dp, n.dpDone = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); _ = log.Close(); close(n.dpDone) }()
	return nil
}

// RestartPodResources stops the PodResources server (the socket
// disappears, as when the kubelet restarts) and serves the same
// assignments again after down.
func (n *Node) RestartPodResources(down time.Duration) error {
	n.stopPR()
	time.Sleep(down)
	var err error
	n.stopPR, err = n.podRes.Serve(PodResourcesSocket)
	return err
}

// Stop stops the device plugin and the kubelet simulator.
func (n *Node) Stop() {
	stopProcess(n.dp, n.dpDone)
	n.dp = nil
	if n.kubelet != nil {
		n.kubelet.Stop()
	}
	if n.stopPR != nil {
		n.stopPR()
	}
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

var errNoVF = errors.New("no such VF")
