# VF discovery: the SR-IOV device plugin integration test.
#
# `make test-sriovdp` builds the pinned sriov-network-device-plugin once
# (hack/tools/sriovdp, cached under $(CACHE_DIR)/sriovdp keyed on its
# go.mod/go.sum), then runs, as root, inside a private mount + network
# namespace: the fake ConnectX-6 Dx sysfs tree and netdevs, the kubelet
# simulator, the real device plugin, and `debug mappings` as a subprocess.
# It also reruns the sriovnet resolver namespace test. Without root the
# tests skip and say why.

.PHONY: sriovdp test-sriovdp

sriovdp:
	@hack/tools/sriovdp/build.sh

test-sriovdp: build
	@if [ "$$(id -u)" != 0 ]; then echo "test-sriovdp: not root: the namespace tests will skip (they mount a fake /sys and create netdevs; CI runs them as root)"; fi
	SRIOVDP_BINARY="$$(GO=$(GO) hack/tools/sriovdp/build.sh)" MNPTC_BINARY="$(abspath $(BINARY))" \
		$(GO) test -count=1 -v -run '^(TestSRIOVDevicePlugin|TestSysfsResolverInNamespace)$$' ./test/kubeletsim/ ./sriov/

TEST_TARGETS += test-sriovdp
