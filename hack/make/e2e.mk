# End-to-end: the whole stack inside the kernel test bed (test/sandbox,
# docs/demo.md). `make demo` (in the Makefile) runs hack/demo.sh; the suite
# below asserts instead of printing.
#
# test-e2e builds (or reuses, cached under $(CACHE_DIR)) the kernel bed,
# kube-apiserver + etcd and the SR-IOV device plugin, compiles the suite
# statically and runs it in one boot of the bed, with kube-apiserver and etcd
# on the host side of a tap device (hack/sandbox/run.sh).

.PHONY: test-e2e

E2E_FLAGS ?=

test-e2e: build
	hack/kernel/build.sh >/dev/null
	assets="$$(GO=$(GO) hack/kube/build.sh)"; \
	sriovdp="$$(GO=$(GO) hack/tools/sriovdp/build.sh)"; \
	CGO_ENABLED=0 $(GO) test -c -o $(BIN_DIR)/e2e.test ./test/e2e && \
	CGO_ENABLED=0 $(GO) build -o $(BIN_DIR)/sandbox-kubehost ./test/sandbox/kubehost && \
	cd test/e2e && BED_TIMEOUT=$${BED_TIMEOUT:-1500} ../../hack/sandbox/run.sh "$$assets" $(abspath $(BIN_DIR))/e2e.test \
		-test.v -test.timeout 20m -e2e.kube-info @KUBE_INFO@ \
		-e2e.sriovdp "/host$$sriovdp" -e2e.agent "/host$(abspath $(BINARY))" $(E2E_FLAGS)

TEST_TARGETS += test-e2e
