package datapath

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// probeICMP sends an ICMP (or ICMPv6) echo request carrying token and waits
// for the echo reply carrying it. It uses a raw socket (the bed runs as
// root), which sees every ICMP message of the namespace, so replies are
// matched by their payload.
func probeICMP(ns netns.NsHandle, dst netip.Addr, token string, deadline time.Time) error {
	network, listenAddr, proto := "ip4:icmp", "0.0.0.0", 1
	var request icmp.Type = ipv4.ICMPTypeEcho
	var reply icmp.Type = ipv4.ICMPTypeEchoReply
	dst = dst.Unmap()
	if dst.Is6() {
		network, listenAddr, proto = "ip6:ipv6-icmp", "::", 58
		request, reply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	var conn *icmp.PacketConn
	if err := inNS(ns, func() (err error) {
		conn, err = icmp.ListenPacket(network, listenAddr)
		return err
	}); err != nil {
		return fmt.Errorf("icmp socket: %w", err)
	}
	defer func() { _ = conn.Close() }()
	if err := conn.SetDeadline(deadline); err != nil {
		return err
	}
	seq := int(tokenSeq.Load() & 0xffff)
	msg := icmp.Message{Type: request, Body: &icmp.Echo{ID: os.Getpid() & 0xffff, Seq: seq, Data: []byte(token)}}
	// For ICMPv6 the kernel computes the checksum (it needs the pseudo-header).
	wire, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := conn.WriteTo(wire, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return classify(fmt.Errorf("send: %w", err))
	}
	buf := make([]byte, 1500)
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			return classify(fmt.Errorf("receive: %w", err))
		}
		got, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || got.Type != reply {
			continue
		}
		if echo, ok := got.Body.(*icmp.Echo); ok && bytes.Equal(echo.Data, []byte(token)) {
			return nil
		}
	}
}
