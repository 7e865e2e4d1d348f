package main

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image under test: the layout `make image` wrote (IMAGE_LAYOUT, as
// `make test-image` runs it), or one built here from a fresh binary.
func imageUnderTest(t *testing.T) (v1.Image, v1.Descriptor) {
	t.Helper()
	dir := os.Getenv("IMAGE_LAYOUT")
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "image")
		bin := filepath.Join(t.TempDir(), "multi-networkpolicy-tc")
		const pkg = "github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/cmd/multi-networkpolicy-tc/app"
		ldflags := fmt.Sprintf("-X %[1]s.version=v0.0.0-test -X %[1]s.commit=0123abc -X %[1]s.buildDate=2026-01-02T03:04:05Z", pkg)
		build := exec.Command("go", "build", "-C", "../..", "-trimpath", "-ldflags", ldflags, "-o", bin, "./cmd/multi-networkpolicy-tc")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
		conf := filepath.Join(t.TempDir(), "tcdriver.test")
		build = exec.Command("go", "test", "-C", "../..", "-c", "-tags", "kernel", "-trimpath", "-ldflags", "-s -w", "-o", conf, "./tcdriver")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go test -c: %v\n%s", err, out)
		}
		c := imageConfig{Version: "v0.0.0-test", Revision: "0123abc", Created: "2026-01-02T03:04:05Z", Source: "https://example.com/src"}
		if err := run(bin, conf, dir, "", "", "example.com/mnp-tc:test", c); err != nil {
			t.Fatal(err)
		}
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("layout %s holds %d manifests, want 1", dir, len(im.Manifests))
	}
	desc := im.Manifests[0]
	img, err := p.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img, desc
}

func TestImageManifestAndConfig(t *testing.T) {
	img, desc := imageUnderTest(t)
	if desc.MediaType != types.OCIManifestSchema1 {
		t.Errorf("index entry media type %s, want %s", desc.MediaType, types.OCIManifestSchema1)
	}
	if _, err := name.ParseReference(desc.Annotations[refNameAnnotation]); err != nil {
		t.Errorf("layout ref name %q: %v", desc.Annotations[refNameAnnotation], err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.OCIConfigJSON || len(m.Layers) != 1 || m.Layers[0].MediaType != types.OCILayer {
		t.Errorf("manifest: config %s, layers %+v; want one OCI config and one gzip OCI layer", m.Config.MediaType, m.Layers)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{binaryPath}) || len(cf.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q, want [%s] and no cmd", cf.Config.Entrypoint, cf.Config.Cmd, binaryPath)
	}
	if cf.Config.User != "0:0" {
		t.Errorf("user %q, want 0:0 (NET_ADMIN needs root)", cf.Config.User)
	}
	for _, l := range []string{"title", "description", "source", "version", "revision", "created", "licenses"} {
		if cf.Config.Labels["org.opencontainers.image."+l] == "" {
			t.Errorf("label org.opencontainers.image.%s missing: %v", l, cf.Config.Labels)
		}
	}
	if got := cf.Created.UTC().Format("2006-01-02T15:04:05Z"); got != cf.Config.Labels["org.opencontainers.image.created"] {
		t.Errorf("created %s, label says %s", got, cf.Config.Labels["org.opencontainers.image.created"])
	}
	if len(cf.RootFS.DiffIDs) != 1 {
		t.Errorf("rootfs diff IDs %v, want 1", cf.RootFS.DiffIDs)
	}
}

// TestImageFiles checks the exact file list, owners and modes, and runs
// the binaries found in the layer: `version` must print the image's
// labels, and the conformance binary must list the conformance suites.
func TestImageFiles(t *testing.T) {
	img, _ := imageUnderTest(t)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rc.Close() }()
	var got []string
	binary := filepath.Join(t.TempDir(), "multi-networkpolicy-tc")
	conformance := filepath.Join(t.TempDir(), "tcdriver.test")
	extract := map[string]string{"usr/bin/multi-networkpolicy-tc": binary, "usr/lib/multi-networkpolicy-tc/conformance/tcdriver.test": conformance}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s owned by %d:%d, want 0:0", h.Name, h.Uid, h.Gid)
		}
		if !h.ModTime.Equal(cf.Created.Time) {
			t.Errorf("%s mtime %s, want the build date %s", h.Name, h.ModTime, cf.Created.Time)
		}
		got = append(got, fmt.Sprintf("%c %o %s%s", h.Typeflag, h.Mode, h.Name, linkSuffix(h)))
		if dst, ok := extract[h.Name]; ok {
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o755)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			_ = f.Close()
		}
	}
	want := []string{
		"5 755 etc/",
		"0 644 etc/group",
		"0 644 etc/passwd",
		"5 1777 tmp/",
		"5 755 usr/",
		"5 755 usr/bin/",
		"2 777 usr/bin/multi-networkpolicy-iptables -> multi-networkpolicy-tc",
		"0 755 usr/bin/multi-networkpolicy-tc",
		"5 755 usr/lib/",
		"5 755 usr/lib/multi-networkpolicy-tc/",
		"5 755 usr/lib/multi-networkpolicy-tc/conformance/",
		"0 755 usr/lib/multi-networkpolicy-tc/conformance/tcdriver.test",
	}
	if !slices.Equal(got, want) {
		t.Errorf("files:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	out, err := exec.Command(binary, "version", "-o", "json").Output()
	if err != nil {
		t.Fatalf("the image's binary: %v", err)
	}
	for _, l := range []string{"version", "revision"} {
		if v := cf.Config.Labels["org.opencontainers.image."+l]; !strings.Contains(string(out), fmt.Sprintf("%q", v)) {
			t.Errorf("label %s=%q not in the binary's version: %s", l, v, out)
		}
	}
	// The one-liner's binary holds the conformance suites.
	out, err = exec.Command(conformance, "-test.list", "^TestKernel(PolicySemantics|MakeBeforeBreak|DifferentialBridge)$").Output()
	if err != nil {
		t.Fatalf("the image's conformance binary: %v", err)
	}
	got = strings.Fields(string(out))
	slices.Sort(got)
	if !slices.Equal(got, []string{"TestKernelDifferentialBridge", "TestKernelMakeBeforeBreak", "TestKernelPolicySemantics"}) {
		t.Errorf("the conformance binary lists %q", got)
	}
}

func linkSuffix(h *tar.Header) string {
	if h.Linkname == "" {
		return ""
	}
	return " -> " + h.Linkname
}

// TestImageIsReproducibleAndPushes: the same inputs give the same digest,
// and a push to a registry (go-containerregistry's in-memory one, which
// speaks the distribution API) stores that digest.
func TestImageIsReproducibleAndPushes(t *testing.T) {
	bin := []byte("\x7fELF not really a binary")
	c := imageConfig{Version: "v1", Revision: "r", Created: "2026-01-02T03:04:05Z"}
	a, err := buildImage(bin, bin, c)
	if err != nil {
		t.Fatal(err)
	}
	b, err := buildImage(bin, bin, c)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("two builds: %s and %s", da, db)
	}
	c.Version = "v2"
	other, _ := buildImage(bin, bin, c)
	if d, _ := other.Digest(); d == da {
		t.Error("another version gives the same digest")
	}

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	dir := t.TempDir()
	path := filepath.Join(dir, "bin")
	if err := os.WriteFile(path, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/mnp/tc:v1"
	c.Version = "v1"
	if err := run(path, path, filepath.Join(dir, "layout"), filepath.Join(dir, "image.tar"), ref, "example.com/x:v1", c); err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	pushed, err := remote.Head(r)
	if err != nil {
		t.Fatal(err)
	}
	if pushed.Digest != da {
		t.Errorf("pushed %s, built %s", pushed.Digest, da)
	}
}

func TestImageRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	notELF := filepath.Join(dir, "script")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ok := imageConfig{Created: "2026-01-02T03:04:05Z"}
	elf := filepath.Join(dir, "elf")
	_ = os.WriteFile(elf, []byte("\x7fELF"), 0o755)
	for _, tt := range []struct {
		name, binary, conformance, tag, want string
		c                                    imageConfig
	}{
		{"missing binary", filepath.Join(dir, "nope"), elf, "x/y:z", "binary: open", ok},
		{"not ELF", notELF, elf, "x/y:z", "not an ELF executable", ok},
		{"missing conformance binary", elf, filepath.Join(dir, "nope"), "x/y:z", "conformance binary: open", ok},
		{"conformance not ELF", elf, notELF, "x/y:z", "conformance binary " + notELF + ": not an ELF executable", ok},
		{"bad date", elf, elf, "x/y:z", `created "yesterday": want RFC 3339`, imageConfig{Created: "yesterday"}},
	} {
		err := run(tt.binary, tt.conformance, filepath.Join(dir, "out"), "", "", tt.tag, tt.c)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}
