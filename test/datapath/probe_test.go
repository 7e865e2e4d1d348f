package datapath

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// The probe and server engine is the same in and outside the bed; on the
// host it runs in the current namespace over loopback (no root needed).

func TestProbeLoopback(t *testing.T) {
	for _, proto := range []Proto{TCP, UDP} {
		for _, dst := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")} {
			t.Run(string(proto)+"/"+dst.String(), func(t *testing.T) {
				if dst.Is6() && !hasLoopback6() {
					t.Skip("no IPv6 loopback on this host")
				}
				srv, err := listen(netns.None(), proto, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer func() { _ = srv.Close() }()
				res := probe(netns.None(), "host", dst, proto, srv.Port, 2*time.Second)
				if !res.Delivered || res.Err != nil {
					t.Fatalf("probe to a live server: %s", res.Result)
				}
				if !srv.Saw(res.token) || srv.Requests() != 1 {
					t.Errorf("server did not record the token %q (requests %d)", res.token, srv.Requests())
				}
				if res.To != netip.AddrPortFrom(dst, srv.Port) || res.Proto != proto {
					t.Errorf("result names %s %s, want %s %s", res.Proto, res.To, proto, netip.AddrPortFrom(dst, srv.Port))
				}
			})
		}
	}
}

func TestProbeClosedPortIsNotDelivered(t *testing.T) {
	for _, proto := range []Proto{TCP, UDP} {
		t.Run(string(proto), func(t *testing.T) {
			srv, err := listen(netns.None(), proto, 0)
			if err != nil {
				t.Fatal(err)
			}
			port := srv.Port
			if err := srv.Close(); err != nil {
				t.Fatal(err)
			}
			res := probe(netns.None(), "host", netip.MustParseAddr("127.0.0.1"), proto, port, time.Second)
			if res.Delivered || res.Err == nil {
				t.Fatalf("probe to a closed port: %s", res.Result)
			}
		})
	}
}

func TestProbeTimeoutIsBounded(t *testing.T) {
	// A UDP server that reads but never answers: the probe must give up at
	// the deadline and say it timed out, with Reached telling the reply was lost.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pc.Close() }()
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	start := time.Now()
	res := probe(netns.None(), "host", netip.MustParseAddr("127.0.0.1"), UDP, port, 300*time.Millisecond)
	if res.Delivered || !errors.Is(res.Err, errTimeout) {
		t.Fatalf("want a timeout, got %s", res.Result)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("probe took %v, far beyond its 300ms timeout", took)
	}
}

func TestUnknownProtocolIsAnError(t *testing.T) {
	res := probe(netns.None(), "host", netip.MustParseAddr("127.0.0.1"), Proto("dccp"), 1, time.Second)
	if res.Delivered || res.Err == nil {
		t.Fatalf("want an error, got %s", res.Result)
	}
	if _, err := listen(netns.None(), Proto("dccp"), 0); err == nil {
		t.Fatal("listen accepted an unknown protocol")
	}
}

func TestNthAddr(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		n      int
		want   string
		err    bool
	}{
		{"10.10.0.0/24", 2, "10.10.0.2/24", false},
		{"10.10.0.7/24", 2, "10.10.0.2/24", false},
		{"10.10.0.0/24", 255, "10.10.0.255/24", false},
		{"10.10.0.0/24", 256, "", true},
		{"10.10.0.0/16", 300, "10.10.1.44/16", false},
		{"fd00:10::/64", 2, "fd00:10::2/64", false},
		{"fd00:10::/120", 256, "", true},
	} {
		got, err := nthAddr(netip.MustParsePrefix(tc.prefix), tc.n)
		if tc.err {
			if err == nil {
				t.Errorf("nthAddr(%s, %d) = %s, want an error", tc.prefix, tc.n, got)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("nthAddr(%s, %d) = %s, %v, want %s", tc.prefix, tc.n, got, err, tc.want)
		}
	}
}

func TestInBedFollowsTheMarker(t *testing.T) {
	t.Setenv(BedEnv, "")
	if InBed() {
		t.Error("InBed without the marker")
	}
	t.Setenv(BedEnv, "1")
	if !InBed() {
		t.Error("not InBed with the marker")
	}
}

func hasLoopback6() bool {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}
