# Release: version stamping, the OCI image, the deploy manifests.
#
# The version comes from git: the nearest tag (or the commit), the commit,
# and the commit's time as the build date, so that the same commit always
# gives the same binary and the same image digest.

VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
COMMIT      ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BUILD_DATE  ?= $(shell TZ=UTC git log -1 --date=format-local:%Y-%m-%dT%H:%M:%SZ --format=%cd 2>/dev/null || echo 1970-01-01T00:00:00Z)
VERSION_PKG := github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/cmd/multi-networkpolicy-tc/app
GO_LDFLAGS  := -s -w -X $(VERSION_PKG).version=$(VERSION) -X $(VERSION_PKG).commit=$(COMMIT) -X $(VERSION_PKG).buildDate=$(BUILD_DATE)

# The OCI image, built from the static binary by hack/release (pinned
# go-containerregistry, no container engine): an OCI layout in bin/image
# and a tarball for `docker load`. `make image-push IMAGE=REGISTRY/IMAGE:TAG`
# pushes it with the credentials of ~/.docker/config.json.
IMAGE        ?= ghcr.io/k8snetworkplumbingwg/multi-networkpolicy-tc:$(VERSION)
IMAGE_LAYOUT := $(abspath $(BIN_DIR))/image
IMAGE_TAR    := $(abspath $(BIN_DIR))/image.tar
# The conformance run's suites, compiled, for the one-liner inside the
# image (docs/troubleshooting.md, "Verify on your nodes").
CONFORMANCE_BINARY := $(abspath $(BIN_DIR))/conformance/tcdriver.test
RELEASE_TOOL  = cd hack/release && $(GO) run . image -binary $(abspath $(BINARY)) -conformance $(CONFORMANCE_BINARY) \
	-o $(IMAGE_LAYOUT) -tar $(IMAGE_TAR) -tag $(IMAGE) -version $(VERSION) -revision $(COMMIT) -created $(BUILD_DATE)

.PHONY: image image-push test-release conformance-binary
conformance-binary:
	CGO_ENABLED=0 $(GO) test -c -tags kernel -trimpath -ldflags "-s -w" -o $(CONFORMANCE_BINARY) ./tcdriver

image: build conformance-binary
	$(RELEASE_TOOL)

image-push: build conformance-binary
	$(RELEASE_TOOL) -push $(IMAGE)

# Validates the image `make image` built (manifest, config, entrypoint,
# file list, the binary's version against the labels) and builds every
# kustomize overlay into strictly decoded API objects.
test-release: image $(GOLANGCI_LINT)
	cd hack/release && $(GO) vet ./... && IMAGE_LAYOUT=$(IMAGE_LAYOUT) $(GO) test -count=1 ./... && $(GOLANGCI_LINT) run ./...

TEST_TARGETS += test-release
