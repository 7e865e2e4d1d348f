// Package sriovtest builds a fake SR-IOV NIC for tests: a sysfs tree shaped
// like the kernel's for a ConnectX-6 Dx in switchdev mode, the matching real
// netdevs, and the private mount + network namespace to put them in. It is
// what lets the real sriovnet-based resolver and the real SR-IOV device
// plugin run on a machine without the NIC.
package sriovtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov"
)

// Mellanox IDs: the ConnectX-6 Dx PF and the mlx5 VF.
const (
	VendorMellanox = "15b3"
	DeviceCX6DxPF  = "101d"
	DeviceMlx5VF   = "101e"
	Driver         = "mlx5_core"
)

// NIC describes the physical functions of one adapter.
type NIC struct {
	PFs []PF
}

// PF is one physical function and its VFs.
type PF struct {
	PCI    string // e.g. 0000:3b:00.0; the function digit is the port number
	Uplink string // uplink netdev, e.g. ens1f0np0
	// SwitchID is the eswitch's phys_switch_id; empty means legacy mode:
	// no phys_switch_id and no representors, as the kernel shows it.
	SwitchID string
	TotalVFs int
	VFs      []VF // VF N is VFs[N]
}

// VF is one virtual function.
type VF struct {
	PCI    string // e.g. 0000:3b:00.2
	Netdev string // the VF's own netdev (in the pod once attached)
	// Representor is the VF representor netdev on the host; empty models a
	// VF whose representor is missing.
	Representor string
}

// Port is the PF's port number: the function digit of its PCI address.
func (p PF) Port() int {
	n, _ := strconv.Atoi(p.PCI[len(p.PCI)-1:])
	return n
}

// ConnectX6Dx is a dual-port ConnectX-6 Dx in switchdev mode: PF0 with four
// VFs, PF1 with two, names as udev gives them on a slot-1 card.
func ConnectX6Dx() NIC {
	pf := func(port int, switchID string, vfPCIs ...string) PF {
		p := PF{
			PCI:      fmt.Sprintf("0000:3b:00.%d", port),
			Uplink:   fmt.Sprintf("ens1f%dnp%d", port, port),
			SwitchID: switchID,
			TotalVFs: 8,
		}
		for i, a := range vfPCIs {
			p.VFs = append(p.VFs, VF{
				PCI:         a,
				Netdev:      fmt.Sprintf("ens1f%dv%d", port, i),
				Representor: fmt.Sprintf("ens1f%dnpf%dvf%d", port, port, i),
			})
		}
		return p
	}
	return NIC{PFs: []PF{
		pf(0, "b8cef60300a1b2c3", "0000:3b:00.2", "0000:3b:00.3", "0000:3b:00.4", "0000:3b:00.5"),
		pf(1, "b8cef60300a1b2c4", "0000:3b:08.2", "0000:3b:08.3"),
	}}
}

// Fake returns the sriov.Fake holding the same switch as the tree Write makes.
func (n NIC) Fake() *sriov.Fake {
	f := sriov.NewFake()
	for _, pf := range n.PFs {
		f.AddPF(pf.PCI, pf.Uplink, pf.SwitchID != "")
		for i, vf := range pf.VFs {
			rep := vf.Representor
			if pf.SwitchID == "" {
				rep = ""
			}
			f.AddVF(pf.PCI, i, vf.PCI, rep)
		}
	}
	return f
}

// bridge is the PCIe root port the NIC hangs off, relative to /sys.
const bridge = "devices/pci0000:3a/0000:3a:00.0"

// Write creates root/sys with the NIC's PCI functions and netdevs, laid out
// like the kernel's sysfs: devices under the root port, /sys/bus/pci/devices
// and /sys/class/net as symlinks, physfn/virtfnN links, sriov_numvfs,
// phys_port_name/phys_switch_id on the switchdev ports, a driver link and a
// 54-byte modalias (ghw, in the device plugin, rejects shorter ones).
func (n NIC) Write(root string) error {
	w := &treeWriter{sys: filepath.Join(root, "sys")}
	if err := os.RemoveAll(w.sys); err != nil {
		return err
	}
	for _, d := range []string{"bus/pci/devices", "bus/pci/drivers/" + Driver, "class/net",
		"devices/system/node/node0", "kernel/iommu_groups", bridge} {
		w.mkdir(d)
	}
	w.file("devices/system/node/node0/cpulist", "0")
	// The root port is a PCI device too; the device plugin walks every entry.
	w.file(bridge+"/modalias", modalias("8086", "2030", "06", "04"))
	w.link("bus/pci/devices/0000:3a:00.0", "../../../"+bridge)

	for _, pf := range n.PFs {
		w.pciFunction(pf.PCI, DeviceCX6DxPF)
		w.file(bridge+"/"+pf.PCI+"/sriov_totalvfs", strconv.Itoa(pf.TotalVFs))
		w.file(bridge+"/"+pf.PCI+"/sriov_numvfs", strconv.Itoa(len(pf.VFs)))
		portName := ""
		if pf.SwitchID != "" {
			portName = fmt.Sprintf("p%d", pf.Port())
		}
		w.netdev(pf.PCI, pf.Uplink, portName, pf.SwitchID)
		for i, vf := range pf.VFs {
			w.pciFunction(vf.PCI, DeviceMlx5VF)
			w.link(bridge+"/"+pf.PCI+"/virtfn"+strconv.Itoa(i), "../"+vf.PCI)
			w.link(bridge+"/"+vf.PCI+"/physfn", "../"+pf.PCI)
			w.netdev(vf.PCI, vf.Netdev, "", "")
			if pf.SwitchID != "" && vf.Representor != "" {
				// Representors are netdevs of the PF, told apart by port name.
				w.netdev(pf.PCI, vf.Representor, fmt.Sprintf("pf%dvf%d", pf.Port(), i), pf.SwitchID)
			}
		}
	}
	return w.err
}

// treeWriter keeps the first error so Write reads as a layout, not as error
// plumbing.
type treeWriter struct {
	sys string
	err error
}

func (w *treeWriter) mkdir(rel string) {
	if w.err == nil {
		w.err = os.MkdirAll(filepath.Join(w.sys, rel), 0o755)
	}
}

func (w *treeWriter) file(rel, content string) {
	w.mkdir(filepath.Dir(rel))
	if w.err == nil {
		if !strings.HasSuffix(content, "\n") {
			content += "\n"
		}
		w.err = os.WriteFile(filepath.Join(w.sys, rel), []byte(content), 0o644)
	}
}

func (w *treeWriter) link(rel, target string) {
	w.mkdir(filepath.Dir(rel))
	if w.err == nil {
		w.err = os.Symlink(target, filepath.Join(w.sys, rel))
	}
}

func (w *treeWriter) pciFunction(addr, device string) {
	dir := bridge + "/" + addr
	w.file(dir+"/modalias", modalias(VendorMellanox, device, "02", "00"))
	w.file(dir+"/vendor", "0x"+VendorMellanox)
	w.file(dir+"/device", "0x"+device)
	w.file(dir+"/class", "0x020000")
	w.file(dir+"/numa_node", "0")
	w.file(dir+"/revision", "0x00")
	w.mkdir(dir + "/net")
	w.link(dir+"/driver", "../../../../bus/pci/drivers/"+Driver)
	w.link("bus/pci/devices/"+addr, "../../../"+dir)
}

func (w *treeWriter) netdev(pciAddr, name, physPortName, switchID string) {
	dir := bridge + "/" + pciAddr + "/net/" + name
	w.mkdir(dir)
	w.link(dir+"/device", "../../../"+pciAddr)
	w.link(dir+"/subsystem", "../../../../../../class/net")
	if physPortName != "" {
		w.file(dir+"/phys_port_name", physPortName)
	}
	if switchID != "" {
		w.file(dir+"/phys_switch_id", switchID)
	}
	w.file(dir+"/operstate", "up")
	w.link("class/net/"+name, "../../"+dir)
}

// modalias is the kernel's PCI modalias with subsystem device 0016; with the
// newline it is 54 bytes long.
func modalias(vendor, device, class, subclass string) string {
	u := strings.ToUpper
	return fmt.Sprintf("pci:v0000%sd0000%ssv0000%ssd00000016bc%ssc%si00", u(vendor), u(device), u(vendor), class, subclass)
}
