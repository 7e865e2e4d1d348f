# TC driver (tcdriver/, docs/tc-rule-pipeline.md). Its unit tests run in
# test-unit and its kernel tests in test-kernel; these targets produce the
# figures of docs/performance.md ("TC driver").

.PHONY: bench-tcdriver bench-tcdriver-kernel

# Compile time/allocations and the fake's incremental cost.
bench-tcdriver:
	$(GO) test -run '^$$' -bench . -benchmem ./tcdriver

# Apply of ~10,000 filters vs a raw netlink loop, in the kernel test bed.
bench-tcdriver-kernel:
	mkdir -p $(BIN_DIR)
	CGO_ENABLED=0 $(GO) test -c -tags kernel -o $(BIN_DIR)/tcdriver-kernel.test ./tcdriver
	cd tcdriver && ../hack/kernel/run.sh ../$(BIN_DIR)/tcdriver-kernel.test -test.bench Kernel -test.benchtime 5x -test.v -test.run TestKernelIncrementalPeerIsO1
