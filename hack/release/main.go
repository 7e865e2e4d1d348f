package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// refNameAnnotation names an image inside an OCI layout (tools such as
// skopeo select it with oci:DIR:NAME).
const refNameAnnotation = "org.opencontainers.image.ref.name"

func main() {
	if len(os.Args) < 2 || os.Args[1] != "image" {
		fmt.Fprintln(os.Stderr, "usage: release image -binary FILE -conformance FILE -o DIR [-tar FILE] [-push REF] [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("image", flag.ExitOnError)
	binary := fs.String("binary", "bin/multi-networkpolicy-tc", "the static agent binary")
	conformance := fs.String("conformance", "bin/conformance/tcdriver.test", "the conformance run's static test binary (CGO_ENABLED=0 go test -c -tags kernel ./tcdriver)")
	out := fs.String("o", "bin/image", "write the image here as an OCI image layout (replaced)")
	tarOut := fs.String("tar", "", "also write a tarball that `docker load` and `crane push` read")
	push := fs.String("push", "", "also push to this reference (REGISTRY/IMAGE:TAG), with the credentials of ~/.docker/config.json")
	tag := fs.String("tag", "ghcr.io/k8snetworkplumbingwg/multi-networkpolicy-tc:latest", "the reference recorded in the layout and the tarball")
	var c imageConfig
	fs.StringVar(&c.Version, "version", "unknown", "the version label")
	fs.StringVar(&c.Revision, "revision", "unknown", "the commit label")
	fs.StringVar(&c.Created, "created", "1970-01-01T00:00:00Z", "the build date (RFC 3339): image and file times")
	fs.StringVar(&c.Source, "source", "https://github.com/k8snetworkplumbingwg/multi-networkpolicy-tc", "the source label")
	_ = fs.Parse(os.Args[2:])
	if err := run(*binary, *conformance, *out, *tarOut, *push, *tag, c); err != nil {
		fmt.Fprintln(os.Stderr, "release image:", err)
		os.Exit(1)
	}
}

func run(binaryPath, conformancePath, out, tarOut, push, tag string, c imageConfig) error {
	bin, err := readBinary(binaryPath)
	if err != nil {
		return err
	}
	conf, err := readBinary(conformancePath)
	if err != nil {
		return fmt.Errorf("conformance %w", err)
	}
	img, err := buildImage(bin, conf, c)
	if err != nil {
		return err
	}
	ref, err := name.ParseReference(tag)
	if err != nil {
		return fmt.Errorf("-tag %q: %w", tag, err)
	}
	if err := writeLayout(out, img, ref.String()); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s %s\n", out, ref, digest)
	if tarOut != "" {
		if err := tarball.WriteToFile(tarOut, ref, img); err != nil {
			return fmt.Errorf("-tar %s: %w", tarOut, err)
		}
		fmt.Printf("%s: %s\n", tarOut, ref)
	}
	if push != "" {
		dst, err := name.ParseReference(push)
		if err != nil {
			return fmt.Errorf("-push %q: %w", push, err)
		}
		if err := remote.Write(dst, img, remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return fmt.Errorf("push %s: %w", dst, err)
		}
		fmt.Printf("pushed %s@%s\n", dst, digest)
	}
	return nil
}

// writeLayout replaces dir with an OCI image layout holding img.
func writeLayout(dir string, img v1.Image, ref string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("layout %s: %w", dir, err)
	}
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: ref}))
}
