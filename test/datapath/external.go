package datapath

import (
	"net/netip"
	"time"

	"github.com/vishvananda/netns"
)

// The functions below expose the probes and servers for network namespaces
// that a Topology did not create: the end-to-end sandbox (test/sandbox)
// builds its pods the way accelerated-bridge-cni does (the fake NIC's VF
// netdev moved into the pod's namespace) and outside of a testing.TB.

// NewNetns creates the named network namespace /run/netns/name without
// moving the caller's thread.
func NewNetns(name string) (netns.NsHandle, error) { return newNamedNetns(name) }

// ServeIn starts a probe server for proto/port in namespace ns, on the
// wildcard address of both families.
func ServeIn(ns netns.NsHandle, proto Proto, port uint16) (*Server, error) {
	return listen(ns, proto, port)
}

// ProbeFrom sends one probe from namespace ns (named from in the result) to
// dst, bounded by timeout. When srv is the destination's server, Reached
// tells whether the request got there.
func ProbeFrom(ns netns.NsHandle, from string, dst netip.Addr, proto Proto, port uint16, timeout time.Duration, srv *Server) Result {
	res := probe(ns, from, dst, proto, port, timeout)
	if srv != nil {
		res.Reached = srv.Saw(res.token)
	}
	return res.Result
}
