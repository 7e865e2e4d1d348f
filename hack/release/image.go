// Command release builds the agent's OCI image from the static binary,
// without a container engine, and can push it to a registry:
//
//	release image -binary bin/multi-networkpolicy-tc -o bin/image [-push REGISTRY/IMAGE:TAG]
//
// The image is the binary and nothing else a shell could use: one layer
// with /usr/bin/multi-networkpolicy-tc (the path upstream DaemonSets call),
// /usr/bin/multi-networkpolicy-iptables linking to it (the command of
// multi-networkpolicy-iptables' DaemonSet), the conformance run's compiled
// suites (-conformance: tcdriver's kernel tests, `go test -c -tags kernel`)
// at /usr/lib/multi-networkpolicy-tc/conformance/tcdriver.test, for
// `kubectl debug node/NODE --profile=sysadmin --image=IMAGE --
// /usr/lib/multi-networkpolicy-tc/conformance/tcdriver.test -mnptc.pf=PF -test.v`
// (docs/troubleshooting.md, "Verify on your nodes"), /etc/passwd and
// /etc/group for the users Kubernetes may run it as, and /tmp. Every file is readable by
// any user. It runs as root (USER 0:0) because the agent needs NET_ADMIN,
// which Kubernetes grants only to root (docs/deployment.md); a DaemonSet
// that sets runAsUser keeps working, and `version` runs as any user.
//
// The layer's timestamps and the image's creation time are the build date
// (the commit's time), so one commit always gives one digest.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Paths in the image.
const (
	binaryPath      = "/usr/bin/multi-networkpolicy-tc"
	iptablesCommand = "/usr/bin/multi-networkpolicy-iptables"
	conformancePath = "/usr/lib/multi-networkpolicy-tc/conformance/tcdriver.test"
)

// imageConfig is what goes into the image besides the binary.
type imageConfig struct {
	Version  string
	Revision string
	// Created is the build date, RFC 3339.
	Created string
	Source  string
}

// entry is one file of the layer.
type entry struct {
	name     string
	typeflag byte
	mode     int64
	data     []byte
	link     string
}

func layerEntries(binary, conformance []byte) []entry {
	return []entry{
		{name: "etc/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "etc/group", typeflag: tar.TypeReg, mode: 0o644, data: []byte("root:x:0:\nnonroot:x:65532:\nnobody:x:65534:\n")},
		{name: "etc/passwd", typeflag: tar.TypeReg, mode: 0o644, data: []byte("root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n")},
		{name: "tmp/", typeflag: tar.TypeDir, mode: 0o1777},
		{name: "usr/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "usr/bin/multi-networkpolicy-iptables", typeflag: tar.TypeSymlink, mode: 0o777, link: "multi-networkpolicy-tc"},
		{name: "usr/bin/multi-networkpolicy-tc", typeflag: tar.TypeReg, mode: 0o755, data: binary},
		{name: "usr/lib/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "usr/lib/multi-networkpolicy-tc/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "usr/lib/multi-networkpolicy-tc/conformance/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "usr/lib/multi-networkpolicy-tc/conformance/tcdriver.test", typeflag: tar.TypeReg, mode: 0o755, data: conformance},
	}
}

func layerTar(entries []entry, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typeflag, Mode: e.mode, Linkname: e.link,
			Size: int64(len(e.data)), ModTime: mtime, Uname: "root", Gname: "root", Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// buildImage returns the linux/amd64 image of binary and the conformance
// run's test binary.
func buildImage(binary, conformance []byte, c imageConfig) (v1.Image, error) {
	if len(binary) == 0 {
		return nil, errors.New("the binary is empty")
	}
	if len(conformance) == 0 {
		return nil, errors.New("the conformance binary is empty")
	}
	created, err := time.Parse(time.RFC3339, c.Created)
	if err != nil {
		return nil, fmt.Errorf("created %q: want RFC 3339: %w", c.Created, err)
	}
	data, err := layerTar(layerEntries(binary, conformance), created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: created}
	cf.Config.Entrypoint = []string{binaryPath}
	cf.Config.User = "0:0"
	cf.Config.WorkingDir = "/"
	cf.Config.Env = []string{"PATH=/usr/bin"}
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.title":       "multi-networkpolicy-tc",
		"org.opencontainers.image.description": "Enforces MultiNetworkPolicy on SR-IOV VF representors with TC flower",
		"org.opencontainers.image.source":      c.Source,
		"org.opencontainers.image.version":     c.Version,
		"org.opencontainers.image.revision":    c.Revision,
		"org.opencontainers.image.created":     c.Created,
		"org.opencontainers.image.licenses":    "Apache-2.0",
	}
	cf.History = []v1.History{{Created: v1.Time{Time: created}, CreatedBy: "hack/release image", Comment: "multi-networkpolicy-tc " + c.Version}}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	// The annotations repeat the labels a registry shows without pulling
	// the config.
	return mutate.Annotations(img, map[string]string{
		"org.opencontainers.image.version":  c.Version,
		"org.opencontainers.image.revision": c.Revision,
		"org.opencontainers.image.created":  c.Created,
		"org.opencontainers.image.source":   c.Source,
	}).(v1.Image), nil
}

func readBinary(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("binary: %w", err)
	}
	if len(data) < 4 || string(data[:4]) != "\x7fELF" {
		return nil, fmt.Errorf("binary %s: not an ELF executable", path)
	}
	return data, nil
}
