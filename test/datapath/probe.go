package datapath

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// Proto is a probe's transport.
type Proto string

// The probe transports. ICMP means ICMPv6 for an IPv6 destination.
const (
	TCP  Proto = "tcp"
	UDP  Proto = "udp"
	SCTP Proto = "sctp"
	ICMP Proto = "icmp"
)

// Outcome is what a test expects of a probe.
type Outcome bool

// Expected outcomes for Pod.Expect.
const (
	Delivered Outcome = true
	Dropped   Outcome = false
)

func (o Outcome) String() string {
	if o {
		return "delivered"
	}
	return "dropped"
}

// Result is the outcome of one probe.
type Result struct {
	From  string         // source pod
	To    netip.AddrPort // destination (port 0 for ICMP)
	Proto Proto
	// Delivered: the reply came back within the timeout.
	Delivered bool
	// Reached: our server on the destination read the request (TCP, UDP and
	// SCTP; false for ICMP and for destinations without our server). A
	// request that Reached but was not Delivered lost its reply.
	Reached bool
	// Err says why the probe was not delivered (timeout, refused, ...).
	Err     error
	Elapsed time.Duration
}

func (r Result) String() string {
	s := fmt.Sprintf("%s %s→%s: ", r.Proto, r.From, r.To)
	switch {
	case r.Delivered:
		s += "delivered"
	case r.Reached:
		s += "reached the server, reply lost"
	default:
		s += "dropped"
	}
	if r.Err != nil {
		s += " (" + r.Err.Error() + ")"
	}
	return s + fmt.Sprintf(" in %v", r.Elapsed.Round(time.Millisecond))
}

var tokenSeq atomic.Uint64

func newToken(from string) string {
	return fmt.Sprintf("probe-%s-%d", from, tokenSeq.Add(1))
}

// Probe sends one request from the pod to dst (port ignored for ICMP) and
// reports whether the reply came back within the topology's timeout. If dst
// belongs to a pod of the same topology that has no server for proto/port,
// one is started first.
func (p *Pod) Probe(dst netip.Addr, proto Proto, port uint16) Result {
	if target := p.topo.PodByAddr(dst); target != nil && proto != ICMP {
		if _, err := target.serve(proto, port); err != nil {
			return Result{From: p.Name, To: netip.AddrPortFrom(dst, port), Proto: proto,
				Err: fmt.Errorf("start server on %s: %w", target.Name, err)}
		}
	}
	res := probe(p.NS, p.Name, dst, proto, port, p.topo.opts.Timeout)
	if target := p.topo.PodByAddr(dst); target != nil {
		if srv := target.server(proto, port); srv != nil {
			res.Reached = srv.Saw(res.token)
		}
	}
	return res.Result
}

// Expect probes dst and fails t unless the outcome is want.
func (p *Pod) Expect(t testing.TB, dst netip.Addr, proto Proto, port uint16, want Outcome) Result {
	t.Helper()
	res := p.Probe(dst, proto, port)
	// A loaded host can make the guest miss one short timeout: an expected
	// delivery gets two more tries before it counts as dropped. A rule that
	// drops drops every try, and an expected drop is never retried, so this
	// loosens nothing the suites assert about policy.
	for try := 0; try < 2 && want == Delivered && !res.Delivered && errors.Is(res.Err, errTimeout); try++ {
		t.Logf("%s: no answer in %s, trying again", res, p.topo.opts.Timeout)
		res = p.Probe(dst, proto, port)
	}
	if Outcome(res.Delivered) != want {
		t.Errorf("want %s, got %s", want, res)
	}
	return res
}

type probeResult struct {
	Result
	token string
}

// probe runs one probe from namespace ns (netns.None() for the current one).
func probe(ns netns.NsHandle, from string, dst netip.Addr, proto Proto, port uint16, timeout time.Duration) probeResult {
	to := netip.AddrPortFrom(dst, port)
	if proto == ICMP {
		to = netip.AddrPortFrom(dst, 0)
	}
	res := probeResult{Result: Result{From: from, To: to, Proto: proto}, token: newToken(from)}
	start := time.Now()
	deadline := start.Add(timeout)
	var err error
	switch proto {
	case TCP:
		err = probeStream(ns, "tcp", to, res.token, deadline)
	case SCTP:
		err = probeSCTP(ns, to, res.token, deadline)
	case UDP:
		err = probeUDP(ns, to, res.token, deadline)
	case ICMP:
		err = probeICMP(ns, dst, res.token, deadline)
	default:
		err = fmt.Errorf("unknown protocol %q", proto)
	}
	res.Elapsed = time.Since(start)
	res.Delivered = err == nil
	res.Err = err
	return res
}

// inNS runs fn in ns, or in the current namespace for netns.None().
func inNS(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	return Do(ns, fn)
}

// errTimeout reports a probe that got no answer in time.
var errTimeout = errors.New("timed out")

func classify(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errTimeout
	}
	return err
}

// exchange writes token and a newline and expects the same line back.
func exchange(rw interface {
	Write([]byte) (int, error)
	Read([]byte) (int, error)
}, token string) error {
	if _, err := rw.Write([]byte(token + "\n")); err != nil {
		return classify(fmt.Errorf("send: %w", err))
	}
	line, err := bufio.NewReader(rw).ReadString('\n')
	if err != nil {
		return classify(fmt.Errorf("receive: %w", err))
	}
	if line != token+"\n" {
		return fmt.Errorf("unexpected reply %q", line)
	}
	return nil
}

func probeStream(ns netns.NsHandle, network string, to netip.AddrPort, token string, deadline time.Time) error {
	var conn net.Conn
	d := net.Dialer{Deadline: deadline}
	err := inNS(ns, func() (err error) {
		conn, err = d.Dial(network, to.String())
		return err
	})
	if err != nil {
		return classify(fmt.Errorf("connect: %w", err))
	}
	defer func() { _ = conn.Close() }()
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	return exchange(conn, token)
}

func probeUDP(ns netns.NsHandle, to netip.AddrPort, token string, deadline time.Time) error {
	var conn *net.UDPConn
	err := inNS(ns, func() (err error) {
		conn, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
		return err
	})
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer func() { _ = conn.Close() }()
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	if _, err := conn.Write([]byte(token)); err != nil {
		return classify(fmt.Errorf("send: %w", err))
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		// An ICMP port unreachable surfaces as ECONNREFUSED on a connected UDP socket.
		return classify(fmt.Errorf("receive: %w", err))
	}
	if string(buf[:n]) != token {
		return fmt.Errorf("unexpected reply %q", buf[:n])
	}
	return nil
}

// portString is strconv for ports, to keep call sites short.
func portString(port uint16) string { return strconv.Itoa(int(port)) }

// ProbeSpec is one probe of ExpectAll: from a pod to dst, and the outcome
// it must have.
type ProbeSpec struct {
	From  *Pod
	Dst   netip.Addr
	Proto Proto
	Port  uint16
	Want  Outcome
}

// ExpectAll runs the probes eight at a time (a dropped probe costs the
// whole timeout, and they are independent: each has its own source port
// or echo token) and fails t for each whose outcome differs. A probe that
// must be delivered is retried by Expect (a first SCTP INIT lost costs a
// 3 s RTO, longer than the timeout); one that must be dropped is never
// retried, and must not have reached the server.
func ExpectAll(t testing.TB, probes []ProbeSpec) {
	t.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, p := range probes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			res := p.From.Expect(t, p.Dst, p.Proto, p.Port, p.Want)
			if p.Want == Dropped && res.Reached {
				t.Errorf("%s: a denied request reached the server", res)
			}
		}()
	}
	wg.Wait()
}
