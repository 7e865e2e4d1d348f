// Package kernelbed tests the kernel test bed's own logic (hack/kernel):
// that the UML kernel is built for the host's XSAVE size, that the cache key
// covers every build input, and that a host the bed cannot run on is told
// so in one line before booting. Each host size is given through
// BED_HOST_XSAVE_SIZE, so the AVX-512 (2,696-byte) and AMX (11,008-byte)
// cases are both checked on any CPU; nothing here boots a kernel.
package kernelbed

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

const (
	avx512Host = 2696  // XSAVE area of an AVX-512 CPU without AMX (AMD Zen 4, older Xeons)
	amxHost    = 11008 // XSAVE area of a Xeon with AMX (Sapphire Rapids and later)
)

var kernelDir = func() string { d, _ := filepath.Abs("../../hack/kernel"); return d }()

// bedCopy copies hack/kernel into a temporary directory so a test can edit
// its inputs, and gives it an empty cache holding a stand-in for the
// linux-source package of the given version.
func bedCopy(t *testing.T, sourceVersion string) (dir, cache string) {
	t.Helper()
	dir, cache = t.TempDir(), t.TempDir()
	entries, err := os.ReadDir(kernelDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(kernelDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeDeb(t, cache, sourceVersion)
	return dir, cache
}

func writeDeb(t *testing.T, cache, version string) {
	t.Helper()
	debs := filepath.Join(cache, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(debs, "linux-source-6.1_"+version+"_all.deb"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// run runs a bed script with env on top of ours and returns stdout, stderr
// and whether it succeeded.
func run(t *testing.T, env []string, name string, args ...string) (stdout, stderr string, ok bool) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("%s: %v", name, err)
	}
	return o.String(), e.String(), err == nil
}

// plan runs `build.sh plan` for a host with the given XSAVE size.
func plan(t *testing.T, dir, cache string, xsave int) map[string]string {
	t.Helper()
	out, errOut, ok := run(t, []string{"KERNEL_CACHE=" + cache, "BED_HOST_XSAVE_SIZE=" + strconv.Itoa(xsave)},
		filepath.Join(dir, "build.sh"), "plan")
	if !ok {
		t.Fatalf("build.sh plan (XSAVE %d): %s", xsave, errOut)
	}
	p := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(l, "=")
		p[k] = v
	}
	return p
}

func TestPlanFollowsTheHostXSAVESize(t *testing.T) {
	dir, cache := bedCopy(t, "6.1.172-1")
	for _, tc := range []struct {
		name       string
		xsave      int
		stackOrder string
	}{
		// Three FP areas (thread_info, the host's signal frame, the
		// handler's uml_pt_regs) and 16 KiB of calls must fit.
		{"AVX-512 host", avx512Host, "3"}, // 32 KiB ≥ 3×2696 + 16 KiB
		{"AMX host", amxHost, "4"},        // 64 KiB ≥ 3×11008 + 16 KiB
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := plan(t, dir, cache, tc.xsave)
			if p["XSAVE_SIZE"] != strconv.Itoa(tc.xsave) {
				t.Errorf("XSAVE_SIZE = %q, want %d", p["XSAVE_SIZE"], tc.xsave)
			}
			if p["STACK_ORDER"] != tc.stackOrder {
				t.Errorf("STACK_ORDER = %q, want %s", p["STACK_ORDER"], tc.stackOrder)
			}
			if p["SOURCE"] != "linux-source-6.1_6.1.172-1_all.deb" {
				t.Errorf("SOURCE = %q", p["SOURCE"])
			}
			if !strings.HasSuffix(p["KERNEL"], "/linux-"+p["KERNEL_KEY"]) {
				t.Errorf("KERNEL %q is not named by KERNEL_KEY %q", p["KERNEL"], p["KERNEL_KEY"])
			}
		})
	}
	if a, b := plan(t, dir, cache, avx512Host)["KERNEL_KEY"], plan(t, dir, cache, amxHost)["KERNEL_KEY"]; a == b {
		t.Errorf("AVX-512 and AMX hosts share kernel key %s: one host's kernel would be reused on the other", a)
	}
}

// Every input of the kernel build changes the key, so a cached kernel is
// never reused after one of them changed.
func TestKernelKeyCoversEveryBuildInput(t *testing.T) {
	base := func(t *testing.T) (string, string, string) {
		dir, cache := bedCopy(t, "6.1.172-1")
		return dir, cache, plan(t, dir, cache, amxHost)["KERNEL_KEY"]
	}
	for _, tc := range []struct {
		name   string
		change func(t *testing.T, dir, cache string)
	}{
		{"uml.config option", func(t *testing.T, dir, _ string) { appendFile(t, filepath.Join(dir, "uml.config"), "NF_TABLES\n") }},
		{"newer linux-source", func(t *testing.T, _, cache string) { writeDeb(t, cache, "6.1.180-1") }},
		{"build steps", func(t *testing.T, dir, _ string) {
			edit(t, filepath.Join(dir, "build.sh"), "make -s ARCH=um defconfig", "make -s ARCH=um allnoconfig")
		}},
		{"stack sizing rule", func(t *testing.T, dir, _ string) {
			edit(t, filepath.Join(dir, "build.sh"), "3 * size + 16384", "3 * size + 32768")
		}},
		{"source patch", func(t *testing.T, dir, _ string) {
			edit(t, filepath.Join(dir, "build.sh"), `sed -i "s/DEFINE_LONGS`, `sed -i -e "" "s/DEFINE_LONGS`)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, cache, before := base(t)
			tc.change(t, dir, cache)
			if after := plan(t, dir, cache, amxHost)["KERNEL_KEY"]; after == before {
				t.Errorf("kernel key %s unchanged", after)
			}
		})
	}
	t.Run("comment only", func(t *testing.T) {
		dir, cache, before := base(t)
		appendFile(t, filepath.Join(dir, "uml.config"), "# a comment\n")
		if after := plan(t, dir, cache, amxHost)["KERNEL_KEY"]; after != before {
			t.Errorf("a comment changed the kernel key (%s → %s): a needless 20-minute rebuild", before, after)
		}
	})
}

func TestPatchSetsHostFPSize(t *testing.T) {
	for _, xsave := range []int{avx512Host, amxHost} {
		t.Run(strconv.Itoa(xsave), func(t *testing.T) {
			src := t.TempDir()
			copyTree(t, "testdata/uml-src", src)
			if _, errOut, ok := run(t, []string{"BED_HOST_XSAVE_SIZE=" + strconv.Itoa(xsave)},
				filepath.Join(kernelDir, "build.sh"), "patch", src); !ok {
				t.Fatalf("build.sh patch: %s", errOut)
			}
			b, err := os.ReadFile(filepath.Join(src, "arch/x86/um/user-offsets.c"))
			if err != nil {
				t.Fatal(err)
			}
			want := "DEFINE_LONGS(HOST_FP_SIZE, " + strconv.Itoa(xsave) + ");"
			if got := regexp.MustCompile(`DEFINE_LONGS\(HOST_FP_SIZE, \d+\);`).FindAllString(string(b), -1); len(got) != 1 || got[0] != want {
				t.Errorf("patched source has %q, want exactly [%s]", got, want)
			}
		})
	}
	t.Run("upstream changed", func(t *testing.T) {
		src := t.TempDir()
		copyTree(t, "testdata/uml-src", src)
		f := filepath.Join(src, "arch/x86/um/user-offsets.c")
		edit(t, f, "2696", "2704")
		_, errOut, ok := run(t, []string{"BED_HOST_XSAVE_SIZE=11008"}, filepath.Join(kernelDir, "build.sh"), "patch", src)
		if ok || !strings.Contains(errOut, "user-offsets.c no longer says") {
			t.Errorf("patch of a changed source: ok=%v, stderr %q; want a failure naming the file", ok, errOut)
		}
	})
}

func TestPlanRejectsImplausibleSizes(t *testing.T) {
	dir, cache := bedCopy(t, "6.1.172-1")
	for _, size := range []string{"abc", "0", "512", "2697", "1048576"} {
		_, errOut, ok := run(t, []string{"KERNEL_CACHE=" + cache, "BED_HOST_XSAVE_SIZE=" + size}, filepath.Join(dir, "build.sh"), "plan")
		if ok || !strings.Contains(errOut, "is not a size in bytes") {
			t.Errorf("BED_HOST_XSAVE_SIZE=%s: ok=%v, stderr %q", size, ok, errOut)
		}
	}
}

// The preflight runs before every boot: a kernel built for another host,
// or a host where ptrace does not work, gets exactly one line with the
// cause and the fix, and no boot.
func TestPreflight(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the bed runs on x86-64 hosts only")
	}
	for _, tc := range []struct {
		name       string
		built      int    // xsave_size in the kernel's .meta (0: no .meta)
		probe      string // the probe's script body
		wantOK     bool
		wantInLine []string
	}{
		{"AMX kernel on AMX host", amxHost, "echo 11008", true, nil},
		{"AVX-512 kernel on AVX-512 host", avx512Host, "echo 2696", true, nil},
		{"AVX-512 kernel on AMX host", avx512Host, "echo 11008", false, []string{"2696-byte FP state", "11008 bytes", "fix: run hack/kernel/build.sh"}},
		{"AMX kernel on AVX-512 host", amxHost, "echo 2696", false, []string{"11008-byte FP state", "2696 bytes", "fix:"}},
		{"ptrace refused", amxHost, "echo 'xsave-size: ptrace is not permitted here' >&2; exit 2", false, []string{"ptrace is not permitted", "fix:"}},
		{"kernel without meta", 0, "echo 11008", false, []string{".meta", "fix:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			kernel := filepath.Join(tmp, "linux-test")
			if tc.built != 0 {
				if err := os.WriteFile(kernel+".meta", []byte("xsave_size="+strconv.Itoa(tc.built)+"\nstack_order=4\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			probe := filepath.Join(tmp, "probe")
			if err := os.WriteFile(probe, []byte("#!/bin/sh\n"+tc.probe+"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			script := `. "$LIB"; BED_KERNEL=$KERNEL BED_XSAVE_PROBE=$PROBE bed_preflight`
			out, errOut, ok := run(t, []string{"LIB=" + filepath.Join(kernelDir, "lib.sh"), "KERNEL=" + kernel, "PROBE=" + probe, "BED_UML_ARGS="},
				"bash", "-c", script)
			if ok != tc.wantOK {
				t.Fatalf("preflight ok=%v, want %v (stderr %q)", ok, tc.wantOK, errOut)
			}
			if out != "" {
				t.Errorf("preflight wrote to stdout: %q", out)
			}
			if tc.wantOK {
				if errOut != "" {
					t.Errorf("preflight passed but said %q", errOut)
				}
				return
			}
			if lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "kernel-bed: cannot run on this host: ") {
				t.Fatalf("want one 'kernel-bed: cannot run on this host:' line, got %q", errOut)
			}
			for _, w := range tc.wantInLine {
				if !strings.Contains(errOut, w) {
					t.Errorf("line %q lacks %q", errOut, w)
				}
			}
		})
	}
}

// The real probe, on this host: it must agree with what the host kernel's
// ptrace accepts, which is all UML needs; its figure is one of the sizes
// an XSAVE layout can have (legacy area, header, then 64-byte-aligned or
// packed components: a multiple of 8 of at least 576 bytes).
func TestProbeOnThisHost(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("x86-64 only")
	}
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("no gcc to build the probe")
	}
	bin := filepath.Join(t.TempDir(), "xsave-size")
	if out, err := exec.Command("gcc", "-O2", "-Wall", "-Werror", "-o", bin, filepath.Join(kernelDir, "xsave-size.c")).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	out, errOut, ok := run(t, nil, bin)
	if !ok {
		t.Skipf("probe cannot run here (the bed could not either): %s", errOut)
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || n < 576 || n%8 != 0 {
		t.Fatalf("probe printed %q, want an XSAVE size in bytes", out)
	}
	t.Logf("this host's XSAVE area: %d bytes", n)
}

func appendFile(t *testing.T, f, s string) {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f, append(b, s...), 0o644); err != nil {
		t.Fatal(err)
	}
}

func edit(t *testing.T, f, old, repl string) {
	t.Helper()
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(old)) {
		t.Fatalf("%s has no %q to edit", f, old)
	}
	if err := os.WriteFile(f, bytes.Replace(b, []byte(old), []byte(repl), 1), 0o755); err != nil {
		t.Fatal(err)
	}
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	if err := os.CopyFS(to, os.DirFS(from)); err != nil {
		t.Fatal(err)
	}
	// CopyFS leaves files read-only; the patch edits them.
	_ = filepath.WalkDir(to, func(p string, d os.DirEntry, _ error) error {
		if !d.IsDir() {
			return os.Chmod(p, 0o644)
		}
		return nil
	})
}

// A guest that dies without an exit code gets, after the console's tail, one
// line naming the cause when the console shows a known one.
func TestCrashExplained(t *testing.T) {
	for _, tc := range []struct {
		console, want string
	}{
		{"userspace - ptrace set fp regs failed, errno = 14\nKernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n",
			"kernel-bed: UML could not move FP state through ptrace"},
		{"Kernel panic - not syncing: corrupted stack end detected inside scheduler\n", "kernel-bed: a kernel stack overflowed"},
		{"Out of memory: Killed process 42 (tcdriver.test)\n", "kernel-bed: the guest ran out of memory"},
		{"Kernel panic - not syncing: something new\n", ""},
	} {
		f := filepath.Join(t.TempDir(), "console.log")
		if err := os.WriteFile(f, []byte(tc.console), 0o644); err != nil {
			t.Fatal(err)
		}
		_, errOut, _ := run(t, []string{"LIB=" + filepath.Join(kernelDir, "lib.sh"), "CONSOLE=" + f}, "bash", "-c", `. "$LIB"; bed_explain_crash "$CONSOLE"`)
		if lines := strings.Count(errOut, "\n"); (tc.want == "" && errOut != "") || (tc.want != "" && (lines != 1 || !strings.HasPrefix(errOut, tc.want) || !strings.Contains(errOut, "fix: "))) {
			t.Errorf("console %q: said %q, want one line starting %q with a fix", tc.console, errOut, tc.want)
		}
	}
}

// Where the XSAVE probe cannot run (ptrace refused), build.sh stops before
// building anything, with exit code 3 and one line naming cause and fix.
func TestBuildRefusesHostWithoutPtrace(t *testing.T) {
	dir, cache := bedCopy(t, "6.1.172-1")
	src, err := os.ReadFile(filepath.Join(dir, "xsave-size.c"))
	if err != nil {
		t.Fatal(err)
	}
	// The probe build.sh would compile, already in its cache, as a host
	// that refuses ptrace makes it behave.
	probe := filepath.Join(cache, "tools", fmt.Sprintf("xsave-size-%x", sha256.Sum256(src))[:len("xsave-size-")+12])
	if err := os.MkdirAll(filepath.Dir(probe), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(probe, []byte("#!/bin/sh\necho 'xsave-size: ptrace is not permitted here: Operation not permitted' >&2\nexit 2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(dir, "build.sh"), "plan")
	cmd.Env = append(os.Environ(), "KERNEL_CACHE="+cache, "BED_HOST_XSAVE_SIZE=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("build.sh plan: %v, want exit code 3 (stderr %q)", err, stderr.String())
	}
	if got := stderr.String(); strings.Count(got, "\n") != 1 || !strings.HasPrefix(got, "kernel-bed: cannot run on this host: ptrace is not permitted here") || !strings.Contains(got, "fix: ") {
		t.Errorf("stderr %q, want one line with cause and fix", got)
	}
}
