package sriovtest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
)

// envPrivateNamespace marks the re-executed test binary running inside the
// private namespaces.
const envPrivateNamespace = "MNPTC_TEST_PRIVATE_NS"

// InsidePrivateNamespace tells whether this process is the re-executed
// test binary inside the private namespaces; work that needs the host (the
// network, a build) belongs before InPrivateNamespace, when this is false.
func InsidePrivateNamespace() bool { return os.Getenv(envPrivateNamespace) == "1" }

// InPrivateNamespace makes the calling test run inside
// `unshare --mount --net --propagation private`, where it may mount over /sys
// and create netdevs without touching the host. Use it as
//
//	if !sriovtest.InPrivateNamespace(t) { return }
//
// Outside the namespace it re-runs this one test in a child test binary
// there, reports the child's output and result, and returns false; inside
// it returns true. A Go process cannot unshare its own mount namespace (its
// threads share one filesystem context), hence the re-exec. It skips when
// not root, since namespaces and mounts need CAP_SYS_ADMIN.
func InPrivateNamespace(t *testing.T) bool {
	t.Helper()
	if InsidePrivateNamespace() {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skipf("%s needs root: it mounts a fake /sys and creates netdevs in a private mount+network namespace (CI runs it as root)", t.Name())
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("%s needs unshare(1) from util-linux: %v", t.Name(), err)
	}
	args := []string{"--mount", "--net", "--propagation", "private", os.Args[0],
		"-test.run=^" + regexp.QuoteMeta(t.Name()) + "$", "-test.count=1"}
	if testing.Verbose() {
		args = append(args, "-test.v=true")
	}
	cmd := exec.Command(unshare, args...)
	cmd.Env = append(os.Environ(), envPrivateNamespace+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("in private mount+network namespace:\n%s", out)
	if err != nil {
		t.Fatalf("%s failed in the private namespace: %v", t.Name(), err)
	}
	return false
}

// MountSys writes the NIC's tree under a temporary root, bind-mounts its sys
// over /sys and returns the root (what the device plugin takes as
// GHW_CHROOT). Call it only inside InPrivateNamespace.
func MountSys(t *testing.T, n NIC) string {
	t.Helper()
	root := t.TempDir()
	if err := n.Write(root); err != nil {
		t.Fatalf("write fake sysfs: %v", err)
	}
	if err := syscall.Mount(filepath.Join(root, "sys"), "/sys", "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		t.Fatalf("bind-mount fake sysfs over /sys: %v", err)
	}
	return root
}

// MountTmpfs puts an empty tmpfs on dir. When dir does not exist it mounts on
// the nearest existing parent and creates dir there, so the host's tree is
// never written to.
func MountTmpfs(t *testing.T, dir string) {
	t.Helper()
	at := dir
	for {
		if _, err := os.Stat(at); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("tmpfs on %s: %v", dir, err)
		}
		at = filepath.Dir(at)
	}
	if err := syscall.Mount("tmpfs", at, "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", at, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("tmpfs on %s: %v", dir, err)
	}
}

// CreateNetdevs creates, in the current network namespace, real netdevs with
// the NIC's names: a tap for each uplink and a veth pair for each VF (VF
// netdev ↔ representor), all up, so that code checking or programming the
// representor finds a real link. Call it only inside InPrivateNamespace.
func CreateNetdevs(t *testing.T, n NIC) {
	t.Helper()
	up := func(l netlink.Link) {
		t.Helper()
		if err := netlink.LinkAdd(l); err != nil {
			t.Fatalf("create netdev %s: %v", l.Attrs().Name, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up: %v", l.Attrs().Name, err)
		}
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo)
	}
	for _, pf := range n.PFs {
		up(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: pf.Uplink}, Mode: netlink.TUNTAP_MODE_TAP})
		for _, vf := range pf.VFs {
			if vf.Representor == "" || pf.SwitchID == "" {
				continue
			}
			up(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: vf.Netdev}, PeerName: vf.Representor})
			rep, err := netlink.LinkByName(vf.Representor)
			if err != nil {
				t.Fatalf("representor %s: %v", vf.Representor, err)
			}
			if err := netlink.LinkSetUp(rep); err != nil {
				t.Fatalf("set %s up: %v", vf.Representor, err)
			}
		}
	}
}
