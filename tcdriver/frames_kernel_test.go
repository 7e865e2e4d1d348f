//go:build kernel

package tcdriver

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/k8snetworkplumbingwg/multi-networkpolicy-tc/test/datapath"
)

// Raw frames give the differential and make-before-break tests an exact
// per-packet kernel verdict without real endpoints at arbitrary addresses:
// a frame carrying the first packet of a connection (TCP SYN, UDP, SCTP
// INIT, ICMP echo request) is injected with an AF_PACKET socket on one side
// of the bridge and is delivered, or not, to an AF_PACKET socket on the
// other side. Each frame carries a unique id (its L4 source port, or the
// ICMP echo id) so that the receiver can tell which ones arrived.

type frame struct {
	id       uint16
	vlans    []uint16 // TPIDs, outermost first; VLAN id 100 each
	srcMAC   net.HardwareAddr
	dstMAC   net.HardwareAddr
	src, dst netip.Addr
	proto    uint8
	dstPort  uint16
}

func csumAdd(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func csumFold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xFFFF + sum>>16
	}
	return ^uint16(sum)
}

func (f *frame) l4() []byte {
	switch f.proto {
	case ProtoTCP:
		b := make([]byte, 20)
		binary.BigEndian.PutUint16(b[0:], f.id)
		binary.BigEndian.PutUint16(b[2:], f.dstPort)
		binary.BigEndian.PutUint32(b[4:], 1000+uint32(f.id))
		b[12] = 5 << 4
		b[13] = 0x02 // SYN
		binary.BigEndian.PutUint16(b[14:], 65535)
		return b
	case ProtoUDP:
		b := make([]byte, 8+8)
		binary.BigEndian.PutUint16(b[0:], f.id)
		binary.BigEndian.PutUint16(b[2:], f.dstPort)
		binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
		copy(b[8:], "mnp-tc!!")
		return b
	case ProtoSCTP:
		// Common header + INIT chunk (vtag 0, as conntrack requires).
		b := make([]byte, 12+20)
		binary.BigEndian.PutUint16(b[0:], f.id)
		binary.BigEndian.PutUint16(b[2:], f.dstPort)
		c := b[12:]
		c[0] = 1 // INIT
		binary.BigEndian.PutUint16(c[2:], 20)
		binary.BigEndian.PutUint32(c[4:], 0x1000+uint32(f.id)) // initiate tag
		binary.BigEndian.PutUint32(c[8:], 65536)               // a_rwnd
		binary.BigEndian.PutUint16(c[12:], 1)                  // outbound streams
		binary.BigEndian.PutUint16(c[14:], 1)                  // inbound streams
		binary.BigEndian.PutUint32(c[16:], 1)                  // initial TSN
		crc := crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))
		binary.LittleEndian.PutUint32(b[8:], crc)
		return b
	case ProtoICMP, ProtoICMPv6:
		b := make([]byte, 8+8)
		b[0] = 8
		if f.proto == ProtoICMPv6 {
			b[0] = 128
		}
		binary.BigEndian.PutUint16(b[4:], f.id)
		binary.BigEndian.PutUint16(b[6:], 1)
		copy(b[8:], "mnp-tc!!")
		return b
	}
	panic(fmt.Sprintf("proto %d", f.proto))
}

func (f *frame) bytes() []byte {
	l4 := f.l4()
	var ip []byte
	var eth uint16
	if f.src.Is4() {
		eth = EthIPv4
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(ip[4:], f.id)
		ip[8] = 64
		ip[9] = f.proto
		s, d := f.src.As4(), f.dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], csumFold(csumAdd(0, ip)))
	} else {
		eth = EthIPv6
		ip = make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
		ip[6] = f.proto
		ip[7] = 64
		s, d := f.src.As16(), f.dst.As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
	}
	// L4 checksums over the pseudo-header (SCTP has its own CRC).
	if f.proto != ProtoSCTP && f.proto != ProtoICMP {
		var sum uint32
		sum = csumAdd(sum, f.src.AsSlice())
		sum = csumAdd(sum, f.dst.AsSlice())
		sum += uint32(f.proto) + uint32(len(l4))
		sum = csumAdd(sum, l4)
		c := csumFold(sum)
		switch f.proto {
		case ProtoTCP:
			binary.BigEndian.PutUint16(l4[16:], c)
		case ProtoUDP:
			if c == 0 {
				c = 0xFFFF
			}
			binary.BigEndian.PutUint16(l4[6:], c)
		case ProtoICMPv6:
			binary.BigEndian.PutUint16(l4[2:], c)
		}
	}
	if f.proto == ProtoICMP {
		binary.BigEndian.PutUint16(l4[2:], csumFold(csumAdd(0, l4)))
	}
	b := make([]byte, 0, 14+8+len(ip)+len(l4))
	b = append(b, f.dstMAC...)
	b = append(b, f.srcMAC...)
	for _, tpid := range f.vlans {
		b = binary.BigEndian.AppendUint16(b, tpid)
		b = binary.BigEndian.AppendUint16(b, 100)
	}
	b = binary.BigEndian.AppendUint16(b, eth)
	b = append(b, ip...)
	return append(b, l4...)
}

// parseID returns the id of a frame built by frame.bytes, if it is one.
func parseID(b []byte) (uint16, bool) {
	if len(b) < 14 {
		return 0, false
	}
	off := 12
	et := binary.BigEndian.Uint16(b[off:])
	for (et == Eth8021Q || et == Eth8021AD) && len(b) >= off+6 {
		off += 4
		et = binary.BigEndian.Uint16(b[off:])
	}
	off += 2
	var proto uint8
	switch et {
	case EthIPv4:
		if len(b) < off+20 {
			return 0, false
		}
		proto = b[off+9]
		off += 20
	case EthIPv6:
		if len(b) < off+40 {
			return 0, false
		}
		proto = b[off+6]
		off += 40
	default:
		return 0, false
	}
	if len(b) < off+8 {
		return 0, false
	}
	switch proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
		return binary.BigEndian.Uint16(b[off:]), true
	case ProtoICMP, ProtoICMPv6:
		if b[off] != 8 && b[off] != 128 {
			return 0, false
		}
		return binary.BigEndian.Uint16(b[off+4:]), true
	}
	return 0, false
}

// rawPort is an AF_PACKET socket on a pod's eth0.
type rawPort struct {
	fd      int
	ifindex int
	mu      sync.Mutex
	seen    map[uint16]bool
	done    chan struct{}
}

func openRaw(t *testing.T, ns netns.NsHandle, iface string) *rawPort {
	t.Helper()
	rp := &rawPort{seen: map[uint16]bool{}, done: make(chan struct{})}
	err := datapath.Do(ns, func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return err
		}
		fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, int(htons(syscall.ETH_P_ALL)))
		if err != nil {
			return err
		}
		if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			return err
		}
		// Room for bursts: the make-before-break test sends thousands of
		// frames while the reader shares the guest's one CPU with it.
		if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, 8<<20); err != nil {
			return err
		}
		tv := syscall.Timeval{Usec: 50000}
		if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		rp.fd, rp.ifindex = fd, ifi.Index
		return nil
	})
	if err != nil {
		t.Fatalf("raw socket on %s: %v", iface, err)
	}
	go rp.readLoop()
	t.Cleanup(rp.close)
	return rp
}

func (rp *rawPort) readLoop() {
	buf := make([]byte, 4096)
	for {
		select {
		case <-rp.done:
			return
		default:
		}
		n, from, err := syscall.Recvfrom(rp.fd, buf, 0)
		if err != nil {
			continue
		}
		if ll, ok := from.(*syscall.SockaddrLinklayer); ok && ll.Pkttype == syscall.PACKET_OUTGOING {
			continue
		}
		// VLAN tags that the kernel moved to metadata are not in buf; the
		// id parser copes with both.
		if id, ok := parseID(buf[:n]); ok {
			rp.mu.Lock()
			rp.seen[id] = true
			rp.mu.Unlock()
		}
	}
}

func (rp *rawPort) close() {
	close(rp.done)
	_ = syscall.Close(rp.fd)
}

func (rp *rawPort) send(t *testing.T, f *frame) {
	t.Helper()
	if err := rp.sendErr(f); err != nil {
		t.Fatal(err)
	}
}

func (rp *rawPort) sendErr(f *frame) error {
	if err := syscall.Sendto(rp.fd, f.bytes(), 0, &syscall.SockaddrLinklayer{Ifindex: rp.ifindex, Halen: 6}); err != nil {
		return fmt.Errorf("send frame %d: %w", f.id, err)
	}
	return nil
}

func (rp *rawPort) saw(id uint16) bool {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	return rp.seen[id]
}

// waitFor waits until every id in want arrived or the deadline passed.
func (rp *rawPort) waitFor(want []uint16, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		all := true
		for _, id := range want {
			if !rp.saw(id) {
				all = false
				break
			}
		}
		if all {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}
