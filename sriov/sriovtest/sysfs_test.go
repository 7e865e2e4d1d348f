package sriovtest_test

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/sriov/sriovtest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// TestConnectX6DxTree pins the generated tree: every directory, file (with
// its content) and symlink (with its target), in a canonical listing.
func TestConnectX6DxTree(t *testing.T) {
	root := t.TempDir()
	if err := sriovtest.ConnectX6Dx().Write(root); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	sys := filepath.Join(root, "sys")
	err := filepath.WalkDir(sys, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(sys, path)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			// Every link must resolve inside the tree, as in the kernel's.
			if _, err := os.Stat(path); err != nil {
				t.Errorf("dangling link %s -> %s", rel, target)
			}
			fmt.Fprintf(&b, "%s -> %s\n", rel, target)
		case d.IsDir():
			fmt.Fprintf(&b, "%s/\n", rel)
		default:
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if strings.HasSuffix(rel, "/modalias") && len(data) != 54 {
				t.Errorf("%s is %d bytes; ghw needs the kernel's 54", rel, len(data))
			}
			fmt.Fprintf(&b, "%s = %q\n", rel, data)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "cx6dx-sysfs.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (go test -update creates it)", err)
	}
	if b.String() != string(want) {
		t.Errorf("tree differs from %s (go test -update rewrites it):\n%s", golden, b.String())
	}
}

func TestFakeMatchesTree(t *testing.T) {
	nic := sriovtest.ConnectX6Dx()
	f := nic.Fake()
	vf, err := f.Resolve("0000:3b:08.3")
	if err != nil {
		t.Fatal(err)
	}
	if vf.Representor != nic.PFs[1].VFs[1].Representor || vf.Uplink != nic.PFs[1].Uplink || vf.Index != 1 {
		t.Errorf("Fake resolves 0000:3b:08.3 to %+v", vf)
	}
	if got := len(f.VFs()); got != 6 {
		t.Errorf("Fake has %d VFs, want 6", got)
	}
}
