# Release: version stamping, the OCI image, the deploy manifests.
#
# The version comes from git: the nearest tag (or the commit), the commit,
# and the commit's time as the build date, so that the same commit always
# gives the same binary and the same image digest.

VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo unknown)
COMMIT      ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BUILD_DATE  ?= $(shell TZ=UTC git log -1 --date=format-local:%Y-%m-%dT%H:%M:%SZ --format=%cd 2>/dev/null || echo unknown)
VERSION_PKG := github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/cmd/multi-networkpolicy-tc/app
GO_LDFLAGS  := -s -w -X $(VERSION_PKG).version=$(VERSION) -X $(VERSION_PKG).commit=$(COMMIT) -X $(VERSION_PKG).buildDate=$(BUILD_DATE)
