// Package e2e is the end-to-end suite: the whole stack of test/sandbox
// (real kube-apiserver, SR-IOV device plugin, kubelet simulator and agent
// binary, real TC rules on veth representors) inside the kernel test bed,
// on scenarios modelled on the Kubernetes network policy e2e tests and
// multi-networkpolicy-iptables' bats suites. Every scenario compares real
// traffic with the policy core's reference evaluator. Run it with
// `make test-e2e`; a plain `go test ./...` skips it and says why.
package e2e
