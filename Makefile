# multi-networkpolicy-tc
#
# `make demo` runs the main job on the local sandbox; `make test` runs every
# test CI runs. Each area of the project adds its own targets and test steps
# in hack/make/*.mk (appending to TEST_TARGETS), so areas never edit the same
# lines.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

BIN_DIR      ?= bin
BINARY       := $(BIN_DIR)/multi-networkpolicy-tc
GO           ?= go
# Caches that must survive a fresh clone (kernel, apiserver, device plugin).
CACHE_DIR    ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/multi-networkpolicy-tc
export CACHE_DIR

GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(CACHE_DIR)/tools/golangci-lint-$(GOLANGCI_LINT_VERSION)

# Test steps run by `make test`, in order. Fragments append to it.
TEST_TARGETS := lint test-unit

.PHONY: all build test test-unit lint bench demo fmt clean
all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(GO_LDFLAGS)" -o $(BINARY) ./cmd/multi-networkpolicy-tc

test-unit:
	$(GO) vet ./...
	$(GO) test -count=1 ./...

$(GOLANGCI_LINT):
	mkdir -p $(dir $@)
	GOBIN=$(dir $@) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(dir $@)golangci-lint $@

lint: $(GOLANGCI_LINT)
	@test -z "$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go'))" || { gofmt -l $$(git ls-files -co --exclude-standard '*.go'); echo "gofmt needed"; exit 1; }
	$(GOLANGCI_LINT) run ./...

fmt:
	gofmt -w $$(git ls-files -co --exclude-standard '*.go')

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

demo: build
	hack/demo.sh

clean:
	rm -rf $(BIN_DIR)

-include hack/make/*.mk

# Defined last so that fragments have appended their steps. Every step
# runs even if an earlier one failed, so one run shows every failure.
test:
	@failed=(); for t in $(TEST_TARGETS); do \
	  echo "==> make $$t"; start=$$SECONDS; \
	  if $(MAKE) --no-print-directory $$t; then echo "<== $$t ok ($$((SECONDS-start)) s)"; \
	  else echo "<== $$t FAILED ($$((SECONDS-start)) s)"; failed+=("$$t"); fi; \
	done; \
	if (($${#failed[@]})); then echo "make test: failed: $${failed[*]}"; exit 1; fi; echo "make test: all passed"
