# Kernel test bed (hack/kernel, docs/kernel-test-bed.md): a User-Mode Linux
# kernel with flower/gact/ct/veth/bridge/netdevsim, built once into
# $(CACHE_DIR)/kernel, that runs `//go:build kernel` tests as root.

.PHONY: kernel-bed test-kernel

# Builds (or checks) the cached bed; the first run takes 11-20 min.
kernel-bed:
	hack/kernel/build.sh >/dev/null

# Compiles every package's kernel tests and runs them all in one boot.
test-kernel:
	GO=$(GO) hack/kernel/test-all.sh

TEST_TARGETS += test-kernel
