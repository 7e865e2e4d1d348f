//go:build kernel

package tcdriver

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/policy"
	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// TestKernelCutConnectionsATighterPolicyDenies: a long-lived TCP connection
// and a UDP flow, both allowed, keep passing as established after the
// policy stops allowing them; NetlinkConntrack.Cut removes their conntrack
// entries, and their next packets, either way, are dropped by the new rules.
func TestKernelCutConnectionsATighterPolicyDenies(t *testing.T) {
	datapath.RequireBed(t)
	topo := datapath.NewTopology(t, datapath.Options{Timeout: time.Second})
	a, b := topo.AddPod(t, "a", datapath.PodOptions{}), topo.AddPod(t, "b", datapath.PodOptions{})
	for _, placement := range []string{"representor", "bridge"} {
		t.Run(placement, func(t *testing.T) {
			flushConntrack(t)
			drv := newKernelDriver(t, Options{})
			// enforce applies b's rule set in the placement.
			enforce := func(rs *policy.RuleSet) {
				t.Helper()
				if placement == "representor" {
					apply(t, drv, b.Rep, rs)
					return
				}
				applyBridge(t, drv, &Bridge{Name: topo.Bridge(), Ports: []BridgePort{
					bridgePort(t, a, nil), bridgePort(t, b, rs)}})
			}
			t.Cleanup(func() {
				_ = drv.RemoveBridge(context.Background(), topo.Bridge())
				_ = drv.Remove(context.Background(), b.Rep)
			})
			from := func(ports ...policy.PortMatch) policy.Rule {
				return policy.Rule{Peers: []netip.Prefix{host(a.IPv4)}, Ports: ports}
			}
			open := &policy.RuleSet{Ingress: isolatedDir(from(tcp(80), udp(53)))}
			// Both directions isolated: with egress open, the ingress hook commits
			// whatever the pod sends, and a packet the pod sends first after the
			// cut would re-open the connection as the pod's own (docs/policy-semantics.md §7).
			tight := &policy.RuleSet{Ingress: isolatedDir(from(tcp(443))), Egress: isolatedDir()}
			// The attachment bridgePort gives b: Cut works in its network's zone.
			open.Attachment = policy.Attachment{PodNamespace: "test", PodName: b.Name, Network: testNet}
			tight.Attachment = open.Attachment
			enforce(open)
			tcpSrv, udpSrv := b.Serve(t, datapath.TCP, 80), b.Serve(t, datapath.UDP, 53)

			var tcpConn, udpConn net.Conn
			if err := datapath.Do(a.NS, func() error {
				var err error
				if tcpConn, err = net.DialTimeout("tcp", net.JoinHostPort(b.IPv4.String(), "80"), 2*time.Second); err != nil {
					return err
				}
				udpConn, err = net.Dial("udp", net.JoinHostPort(b.IPv4.String(), "53"))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tcpConn.Close(); _ = udpConn.Close() }()
			reader := bufio.NewReader(tcpConn)
			// send writes one request on each flow and reports which the servers
			// answered.
			send := func(token string) (tcpOK, udpOK bool) {
				t.Helper()
				_ = tcpConn.SetDeadline(time.Now().Add(time.Second))
				if _, err := tcpConn.Write([]byte("t" + token + "\n")); err == nil {
					_, err = reader.ReadString('\n')
					tcpOK = err == nil
				}
				_ = udpConn.SetDeadline(time.Now().Add(time.Second))
				if _, err := udpConn.Write([]byte("u" + token)); err == nil {
					buf := make([]byte, 64)
					_, err = udpConn.Read(buf)
					udpOK = err == nil
				}
				return tcpOK && tcpSrv.Saw("t"+token), udpOK && udpSrv.Saw("u"+token)
			}
			if tcpOK, udpOK := send("1"); !tcpOK || !udpOK {
				t.Fatalf("allowed flows do not pass: tcp %v udp %v", tcpOK, udpOK)
			}
			enforce(tight)
			// What Cut is for: the established flows still pass the new rules.
			if tcpOK, udpOK := send("2"); !tcpOK || !udpOK {
				t.Fatalf("established flows before the cut: tcp %v udp %v, want both passing (else Cut proves nothing here)", tcpOK, udpOK)
			}
			n, err := NetlinkConntrack{}.Cut(context.Background(), []netip.Addr{b.IPv4, b.IPv6}, tight)
			if err != nil {
				t.Fatal(err)
			}
			if n < 2 {
				t.Errorf("Cut removed %d entries, want the TCP and the UDP one", n)
			}
			dumpCT(t, "after the cut")
			for i := 3; i < 6; i++ {
				token := strconv.Itoa(i)
				if tcpOK, udpOK := send(token); tcpOK || udpOK {
					t.Errorf("after the cut, request %s passed: tcp %v udp %v", token, tcpOK, udpOK)
					dumpCT(t, "after request "+token)
				}
			}
			// A connection the tighter policy allows is not cut.
			enforce(open)
			n, err = NetlinkConntrack{}.Cut(context.Background(), []netip.Addr{b.IPv4, b.IPv6}, open)
			if err != nil || n != 0 {
				t.Errorf("Cut with the rules that allow every flow: %d removed, %v; want 0", n, err)
			}
		})
	}
}

func dumpCT(t *testing.T, when string) {
	for _, fam := range []netlink.InetFamily{nl.FAMILY_V4} {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, fam)
		if err != nil {
			t.Log(err)
		}
		for _, f := range flows {
			t.Logf("%s: %s", when, f)
		}
	}
}

// TestKernelNetworksDoNotShareConnections: a UDP flow established while
// the pod's attachment is on network X is, on network Y (another zone), a
// new connection, judged (and denied) by Y's rules; with one zone for all
// networks (the negative control) it would pass as established. So two
// networks with overlapping addresses never share connection state.
func TestKernelNetworksDoNotShareConnections(t *testing.T) {
	datapath.RequireBed(t)
	x := policy.NetworkRef{Namespace: "red", Name: "net-x"}
	y := policy.NetworkRef{Namespace: "blue", Name: "net-y"}
	if DefaultZoneRange.Of(x) == DefaultZoneRange.Of(y) {
		t.Fatalf("networks %s and %s share zone %d: pick other names", x, y, DefaultZoneRange.Of(x))
	}
	topo := datapath.NewTopology(t, datapath.Options{Timeout: time.Second})
	a, b := topo.AddPod(t, "a", datapath.PodOptions{}), topo.AddPod(t, "b", datapath.PodOptions{})
	for i, tc := range []struct {
		name       string
		placement  string
		zones      ZoneRange
		passOnNetY bool
	}{
		{"representor/a zone per network", "representor", DefaultZoneRange, false},
		{"representor/one zone for all (control)", "representor", ZoneRange{First: DefaultZone, Count: 1}, true},
		// Both pods move to network Y (a pod's port dispatches only to pods
		// of its own network), so it is the zone that separates the flow.
		{"bridge/a zone per network", "bridge", DefaultZoneRange, false},
		{"bridge/one zone for all (control)", "bridge", ZoneRange{First: DefaultZone, Count: 1}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			drv := newKernelDriver(t, Options{Zones: tc.zones})
			t.Cleanup(func() {
				_ = drv.RemoveBridge(context.Background(), topo.Bridge())
				_ = drv.Remove(context.Background(), b.Rep)
			})
			apply := func(t *testing.T, drv *TC, dev string, rs *policy.RuleSet) {
				t.Helper()
				if tc.placement == "representor" {
					if err := drv.Apply(context.Background(), dev, rs); err != nil {
						t.Fatalf("apply on %s: %v", dev, err)
					}
					return
				}
				open := &policy.RuleSet{Attachment: policy.Attachment{PodName: "a", Network: rs.Attachment.Network}}
				pa, pb := bridgePort(t, a, nil), bridgePort(t, b, nil)
				pa.RuleSet, pb.RuleSet = open, rs
				applyBridge(t, drv, &Bridge{Name: topo.Bridge(), Ports: []BridgePort{pa, pb}})
			}
			onX := &policy.RuleSet{Attachment: policy.Attachment{PodName: "b", Network: x},
				Ingress: isolatedDir(policy.Rule{Peers: []netip.Prefix{host(a.IPv4)}, Ports: []policy.PortMatch{udp(53)}})}
			onY := &policy.RuleSet{Attachment: policy.Attachment{PodName: "b", Network: y}, Ingress: isolatedDir()}
			apply(t, drv, b.Rep, onX)
			srv := b.Serve(t, datapath.UDP, 53)
			var conn net.Conn
			if err := datapath.Do(a.NS, func() (err error) {
				conn, err = net.Dial("udp", net.JoinHostPort(b.IPv4.String(), "53"))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = conn.Close() }()
			// send reports whether one of three requests was answered (a
			// first datagram on a fresh bridge port may be lost).
			send := func(token string) bool {
				for try := 0; try < 3; try++ {
					_ = conn.SetDeadline(time.Now().Add(time.Second))
					tok := fmt.Sprintf("%s-%d-%d", token, i, try)
					if _, err := conn.Write([]byte(tok)); err != nil {
						return false
					}
					buf := make([]byte, 64)
					if _, err := conn.Read(buf); err == nil && srv.Saw(tok) {
						return true
					}
				}
				return false
			}
			if !send("x") {
				t.Fatal("the flow allowed on network X does not pass")
			}
			apply(t, drv, b.Rep, onY)
			if got := send("y"); got != tc.passOnNetY {
				dumpCT(t, "on network Y")
				t.Errorf("the flow established on network X, sent again on network Y: passed=%v, want %v", got, tc.passOnNetY)
			}
		})
	}
}
