# The node agent: integration tests against a real kube-apiserver and etcd.
#
# hack/kube/build.sh builds both from the Go module proxy (pinned in
# hack/kube/go.mod) into $(CACHE_DIR)/kube/<hash>, under a flock; ~16 min
# cold on 2 cores, ~1 s when cached. It prints the directory.

.PHONY: kube-assets test-integration bench-integration

kube-assets:
	GO=$(GO) hack/kube/build.sh >/dev/null

# The suite, plus a short run of the latency benchmark so that it keeps
# working (it asserts nothing about time; `make bench-integration` gives the
# figures for docs/performance.md).
test-integration:
	assets="$$(GO=$(GO) hack/kube/build.sh)"; \
	KUBE_ASSETS="$$assets" $(GO) test -count=1 -timeout 20m -bench PolicyToProgrammed -benchtime 20x ./test/integration/

bench-integration:
	assets="$$(GO=$(GO) hack/kube/build.sh)"; \
	KUBE_ASSETS="$$assets" $(GO) test -count=1 -timeout 20m -run '^$$' -bench PolicyToProgrammed -benchtime 200x ./test/integration/

TEST_TARGETS += test-integration
