package tcdriver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"

	"github.com/mdlayher/netlink"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// This file speaks rtnetlink TC directly (over github.com/mdlayher/netlink,
// the transport go-tc is built on), encoding exactly the attributes the
// pipeline uses. Why not go-tc v0.4.5 or vishvananda/netlink v1.3.1 is
// explained in docs/tc-rule-pipeline.md ("Library").

// rtnetlink message types and TC constants (linux/rtnetlink.h, pkt_cls.h,
// tc_act/tc_gact.h, tc_act/tc_ct.h).
const (
	rtmNewQdisc  = 36
	rtmGetQdisc  = 38
	rtmNewFilter = 44
	rtmDelFilter = 45
	rtmGetFilter = 46

	tcaKind    = 1
	tcaOptions = 2
	tcaChain   = 11

	tcHClsact = 0xFFFFFFF1

	tcActOK        = 0
	tcActShot      = 2
	tcActPipe      = 3
	tcActGotoChain = 0x20000000
	tcActExtMask   = 0x0FFFFFFF

	tcaActKind    = 1
	tcaActOptions = 2
	tcaActStats   = 4
	tcaActCookie  = 6

	// struct gnet_stats_basic inside TCA_ACT_STATS: u64 bytes, u32 packets.
	tcaStatsBasic = 1

	tcaGactParms = 2

	tcaCtParms  = 1
	tcaCtAction = 3
	tcaCtZone   = 4
	ctActCommit = 1 << 0
)

// Flower attributes (enum TCA_FLOWER_*).
const (
	flClassID          = 1
	flIndev            = 2
	flAct              = 3
	flKeyEthDst        = 4
	flKeyEthDstMask    = 5
	flKeyEthType       = 8
	flKeyIPProto       = 9
	flKeyIPv4Src       = 10
	flKeyIPv4SrcMask   = 11
	flKeyIPv4Dst       = 12
	flKeyIPv4DstMask   = 13
	flKeyIPv6Src       = 14
	flKeyIPv6SrcMask   = 15
	flKeyIPv6Dst       = 16
	flKeyIPv6DstMask   = 17
	flKeyTCPDst        = 19
	flKeyUDPDst        = 21
	flFlags            = 22
	flKeyVlanEthType   = 25
	flKeyTCPDstMask    = 36
	flKeyUDPDstMask    = 38
	flKeySCTPDstMask   = 40
	flKeySCTPDst       = 42
	flKeyICMPv4Type    = 51
	flKeyICMPv4TypeMsk = 52
	flKeyICMPv6Type    = 55
	flKeyICMPv6TypeMsk = 56
	flInHWCount        = 86
	flKeyPortDstMin    = 89
	flKeyPortDstMax    = 90
	flKeyCtState       = 91
	flKeyCtStateMask   = 92
)

// netlinkKernel is the kernel interface over rtnetlink.
type netlinkKernel struct {
	mu   sync.Mutex
	conn *netlink.Conn
	// pinned holds the ifindex of the device being reconciled, resolved
	// once per Apply rather than once per filter.
	pinned map[string]int
}

func (k *netlinkKernel) pin(dev string) (unpin func(), err error) {
	idx, err := ifindex(dev)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	if k.pinned == nil {
		k.pinned = map[string]int{}
	}
	k.pinned[dev] = idx
	k.mu.Unlock()
	return func() {
		k.mu.Lock()
		delete(k.pinned, dev)
		k.mu.Unlock()
	}, nil
}

func (k *netlinkKernel) ifindex(dev string) (int, error) {
	k.mu.Lock()
	idx, ok := k.pinned[dev]
	k.mu.Unlock()
	if ok {
		return idx, nil
	}
	return ifindex(dev)
}

// TC is the Driver that programs the kernel.
type TC struct {
	*reconciler
	nk *netlinkKernel
}

var _ Driver = (*TC)(nil)

// New opens an rtnetlink socket in the current network namespace and
// returns the kernel driver. metrics may be nil.
func New(opts Options, log logrus.FieldLogger, metrics *Metrics) (*TC, error) {
	if _, err := ParseOffload(string(opts.Offload)); err != nil {
		return nil, err
	}
	c, err := netlink.Dial(syscall.NETLINK_ROUTE, nil)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink: %w", err)
	}
	// Kernel error messages (extack) make netlink errors self-explaining.
	_ = c.SetOption(netlink.ExtendedAcknowledge, true)
	nk := &netlinkKernel{conn: c}
	r := newReconciler(nk, opts, log)
	r.metrics = metrics
	return &TC{reconciler: r, nk: nk}, nil
}

// Close releases the netlink socket.
func (t *TC) Close() error { return t.nk.conn.Close() }

// ifindex resolves a device name with one SIOCGIFINDEX ioctl (the
// standard library dumps every link of the namespace for each lookup,
// which dominated the cost of installing thousands of filters).
func ifindex(dev string) (int, error) {
	ifr, err := unix.NewIfreq(dev)
	if err != nil {
		return 0, fmt.Errorf("representor %s: %w: %w", dev, ErrNoDevice, err)
	}
	fd, err := ioctlSocket()
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("representor %s: %w: %w", dev, ErrNoDevice, err)
	}
	return int(ifr.Uint32()), nil
}

var ioctlFD struct {
	once sync.Once
	fd   int
	err  error
}

func ioctlSocket() (int, error) {
	ioctlFD.once.Do(func() {
		ioctlFD.fd, ioctlFD.err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if ioctlFD.err != nil {
			ioctlFD.err = fmt.Errorf("socket for interface ioctls: %w", ioctlFD.err)
		}
	})
	return ioctlFD.fd, ioctlFD.err
}

func tcmsg(ifidx int, handle, parent, info uint32) []byte {
	b := make([]byte, 20)
	binary.NativeEndian.PutUint32(b[4:], uint32(ifidx))
	binary.NativeEndian.PutUint32(b[8:], handle)
	binary.NativeEndian.PutUint32(b[12:], parent)
	binary.NativeEndian.PutUint32(b[16:], info)
	return b
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func (k *netlinkKernel) execute(typ uint16, flags netlink.HeaderFlags, data []byte) ([]netlink.Message, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.conn.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.Request | flags},
		Data:   data,
	})
}

// withExtack keeps the kernel's extended ack message, which
// netlink.OpError already prints ("message: ...").
func withExtack(err error) error { return err }

func (k *netlinkKernel) hasClsact(dev string) (bool, error) {
	idx, err := k.ifindex(dev)
	if err != nil {
		return false, err
	}
	msgs, err := k.execute(rtmGetQdisc, netlink.Dump, tcmsg(idx, 0, 0, 0))
	if err != nil {
		return false, fmt.Errorf("tc qdisc show on representor %s: %w", dev, withExtack(err))
	}
	for _, m := range msgs {
		if len(m.Data) < 20 || int(binary.NativeEndian.Uint32(m.Data[4:])) != idx {
			continue
		}
		if binary.NativeEndian.Uint32(m.Data[12:]) != tcHClsact {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[20:])
		if err != nil {
			continue
		}
		for ad.Next() {
			if ad.Type() == tcaKind && ad.String() == "clsact" {
				return true, nil
			}
		}
	}
	return false, nil
}

func (k *netlinkKernel) ensureClsact(dev string) error {
	idx, err := k.ifindex(dev)
	if err != nil {
		return err
	}
	ae := netlink.NewAttributeEncoder()
	ae.String(tcaKind, "clsact")
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	_, err = k.execute(rtmNewQdisc, netlink.Acknowledge|netlink.Create|netlink.Excl,
		append(tcmsg(idx, 0xFFFF0000, tcHClsact, 0), attrs...))
	if err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("tc qdisc add clsact on representor %s: %w", dev, withExtack(err))
	}
	return nil
}

func (k *netlinkKernel) add(dev string, f *Filter) error {
	return k.newFilter("add", dev, f, netlink.Create|netlink.Excl)
}

func (k *netlinkKernel) replace(dev string, f *Filter) error {
	return k.newFilter("replace", dev, f, netlink.Create)
}

func (k *netlinkKernel) newFilter(op, dev string, f *Filter, flags netlink.HeaderFlags) error {
	idx, err := k.ifindex(dev)
	if err != nil {
		return err
	}
	data, err := encodeFilter(idx, f)
	if err != nil {
		return opError(op, dev, f, err)
	}
	if _, err := k.execute(rtmNewFilter, netlink.Acknowledge|flags, data); err != nil {
		return opError(op, dev, f, withExtack(err))
	}
	return nil
}

func (k *netlinkKernel) del(dev string, f *Filter) error {
	idx, err := k.ifindex(dev)
	if err != nil {
		return err
	}
	ae := netlink.NewAttributeEncoder()
	ae.String(tcaKind, "flower")
	ae.Uint32(tcaChain, f.Chain)
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	info := uint32(f.Prio)<<16 | uint32(htons(f.Protocol))
	if _, err := k.execute(rtmDelFilter, netlink.Acknowledge, append(tcmsg(idx, f.Handle, f.Hook.parent(), info), attrs...)); err != nil {
		return opError("delete", dev, f, withExtack(err))
	}
	return nil
}

func (k *netlinkKernel) flushChain(dev string, h Hook, chain uint32) error {
	idx, err := k.ifindex(dev)
	if err != nil {
		return err
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(tcaChain, chain)
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	if _, err := k.execute(rtmDelFilter, netlink.Acknowledge, append(tcmsg(idx, 0, h.parent(), 0), attrs...)); err != nil {
		return fmt.Errorf("tc filter flush on representor %s %s chain %d: %w", dev, h, chain, withExtack(err))
	}
	return nil
}

func (k *netlinkKernel) list(dev string, h Hook) ([]*Filter, error) {
	idx, err := k.ifindex(dev)
	if err != nil {
		return nil, err
	}
	msgs, err := k.execute(rtmGetFilter, netlink.Dump, tcmsg(idx, 0, h.parent(), 0))
	if err != nil {
		return nil, fmt.Errorf("tc filter show on representor %s %s: %w", dev, h, withExtack(err))
	}
	var out []*Filter
	for _, m := range msgs {
		f, err := decodeFilter(m.Data, h)
		if err != nil {
			return nil, fmt.Errorf("tc filter show on representor %s %s: %w", dev, h, err)
		}
		if f != nil {
			out = append(out, f)
		}
	}
	sortFilters(out)
	return out, nil
}

// encodeFilter builds an RTM_NEWTFILTER payload.
func encodeFilter(ifidx int, f *Filter) ([]byte, error) {
	info := uint32(f.Prio)<<16 | uint32(htons(f.Protocol))
	ae := netlink.NewAttributeEncoder()
	ae.String(tcaKind, "flower")
	ae.Uint32(tcaChain, f.Chain)
	ae.Nested(tcaOptions, func(o *netlink.AttributeEncoder) error {
		m := &f.Match
		if f.Flags != 0 {
			o.Uint32(flFlags, f.Flags)
		}
		switch f.Protocol {
		case EthAll:
		case Eth8021Q, Eth8021AD:
			o.Bytes(flKeyEthType, be16(f.Protocol))
			if m.VLANEthType != 0 {
				o.Bytes(flKeyVlanEthType, be16(m.VLANEthType))
			}
		default:
			o.Bytes(flKeyEthType, be16(f.Protocol))
		}
		if m.DstMACMask != (MAC{}) {
			o.Bytes(flKeyEthDst, m.DstMAC[:])
			o.Bytes(flKeyEthDstMask, m.DstMACMask[:])
		}
		if m.IPProto != 0 {
			o.Uint8(flKeyIPProto, m.IPProto)
		}
		putPrefix(o, m.Src, flKeyIPv4Src, flKeyIPv4SrcMask, flKeyIPv6Src, flKeyIPv6SrcMask)
		putPrefix(o, m.Dst, flKeyIPv4Dst, flKeyIPv4DstMask, flKeyIPv6Dst, flKeyIPv6DstMask)
		if m.DstPortMin != 0 {
			if m.DstPortMin == m.DstPortMax {
				key, maskKey := uint16(0), uint16(0)
				switch m.IPProto {
				case ProtoTCP:
					key, maskKey = flKeyTCPDst, flKeyTCPDstMask
				case ProtoUDP:
					key, maskKey = flKeyUDPDst, flKeyUDPDstMask
				case ProtoSCTP:
					key, maskKey = flKeySCTPDst, flKeySCTPDstMask
				default:
					return fmt.Errorf("port match on ip_proto %d", m.IPProto)
				}
				o.Bytes(key, be16(m.DstPortMin))
				if m.DstPortMask != 0 {
					o.Bytes(maskKey, be16(m.DstPortMask))
				}
			} else {
				o.Bytes(flKeyPortDstMin, be16(m.DstPortMin))
				o.Bytes(flKeyPortDstMax, be16(m.DstPortMax))
			}
		}
		if m.HasICMPType {
			if m.IPProto == ProtoICMPv6 {
				o.Uint8(flKeyICMPv6Type, m.ICMPType)
				o.Uint8(flKeyICMPv6TypeMsk, 0xFF)
			} else {
				o.Uint8(flKeyICMPv4Type, m.ICMPType)
				o.Uint8(flKeyICMPv4TypeMsk, 0xFF)
			}
		}
		if m.CtStateMask != 0 {
			o.Uint16(flKeyCtState, m.CtState)
			o.Uint16(flKeyCtStateMask, m.CtStateMask)
		}
		o.Nested(flAct, func(acts *netlink.AttributeEncoder) error {
			for i, a := range f.Actions {
				acts.Nested(uint16(i+1), func(ae *netlink.AttributeEncoder) error {
					return encodeAction(ae, a, f.Cookie)
				})
			}
			return nil
		})
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	return append(tcmsg(ifidx, f.Handle, f.Hook.parent(), info), attrs...), nil
}

func putPrefix(o *netlink.AttributeEncoder, p netip.Prefix, v4, v4m, v6, v6m uint16) {
	if !p.IsValid() {
		return
	}
	bits := p.Bits()
	if p.Addr().Is4() {
		a := p.Addr().As4()
		o.Bytes(v4, a[:])
		o.Bytes(v4m, maskBytes(bits, 4))
		return
	}
	a := p.Addr().As16()
	o.Bytes(v6, a[:])
	o.Bytes(v6m, maskBytes(bits, 16))
}

func maskBytes(bits, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < bits; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return b
}

// tcGen is struct tc_gen (index, capab, action, refcnt, bindcnt).
func tcGen(action uint32) []byte {
	b := make([]byte, 20)
	binary.NativeEndian.PutUint32(b[8:], action)
	return b
}

func encodeAction(ae *netlink.AttributeEncoder, a Action, cookie []byte) error {
	switch a.Kind {
	case ActAccept, ActDrop, ActGoto:
		ae.String(tcaActKind, "gact")
		code := uint32(tcActOK)
		switch a.Kind {
		case ActDrop:
			code = tcActShot
		case ActGoto:
			code = tcActGotoChain | a.Chain
			if a.Chain > tcActExtMask {
				return fmt.Errorf("goto chain %d out of range", a.Chain)
			}
		}
		ae.Nested(tcaActOptions, func(o *netlink.AttributeEncoder) error {
			o.Bytes(tcaGactParms, tcGen(code))
			return nil
		})
	case ActCt:
		ae.String(tcaActKind, "ct")
		ae.Nested(tcaActOptions, func(o *netlink.AttributeEncoder) error {
			o.Bytes(tcaCtParms, tcGen(tcActPipe))
			var flags uint16
			if a.Commit {
				flags |= ctActCommit
			}
			o.Uint16(tcaCtAction, flags)
			o.Uint16(tcaCtZone, a.Zone)
			return nil
		})
	default:
		return fmt.Errorf("unknown action kind %d", a.Kind)
	}
	if len(cookie) > 0 {
		ae.Bytes(tcaActCookie, cookie)
	}
	return nil
}

// decodeFilter parses one RTM_NEWTFILTER dump message. It returns nil for
// the per-priority header messages (handle 0). A filter that is not flower,
// or uses keys or actions the driver never installs, is returned Foreign.
func decodeFilter(data []byte, h Hook) (*Filter, error) {
	if len(data) < 20 {
		return nil, fmt.Errorf("short tcmsg (%d bytes)", len(data))
	}
	handle := binary.NativeEndian.Uint32(data[8:])
	info := binary.NativeEndian.Uint32(data[16:])
	f := &Filter{Hook: h, Handle: handle, Prio: uint16(info >> 16), Protocol: htons(uint16(info))}
	ad, err := netlink.NewAttributeDecoder(data[20:])
	if err != nil {
		return nil, err
	}
	var opts []byte
	for ad.Next() {
		switch ad.Type() {
		case tcaKind:
			f.Kind = ad.String()
		case tcaChain:
			f.Chain = ad.Uint32()
		case tcaOptions:
			opts = ad.Bytes()
		}
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	if handle == 0 || opts == nil {
		return nil, nil
	}
	if f.Kind != "flower" {
		f.Foreign = true
		return f, nil
	}
	if !decodeFlower(opts, f) {
		f.Foreign = true
	}
	return f, nil
}

// decodeFlower fills f from flower options; false when something the
// driver does not model is present.
func decodeFlower(data []byte, f *Filter) bool {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return false
	}
	m := &f.Match
	ok := true
	var ip4src, ip4srcm, ip4dst, ip4dstm, ip6src, ip6srcm, ip6dst, ip6dstm []byte
	for ad.Next() {
		b := ad.Bytes()
		switch ad.Type() {
		case flFlags:
			fl := ad.Uint32()
			f.Flags = fl & (flagSkipHW | flagSkipSW)
			f.InHW = fl&flagInHW != 0
		case flInHWCount:
			f.InHWCount = ad.Uint32()
		case flKeyEthType:
			// equals the protocol (or the VLAN TPID)
		case flKeyEthDst:
			if len(b) != 6 {
				ok = false
			}
			copy(m.DstMAC[:], b)
		case flKeyEthDstMask:
			if len(b) != 6 {
				ok = false
			}
			copy(m.DstMACMask[:], b)
		case flKeyVlanEthType:
			m.VLANEthType = binary.BigEndian.Uint16(b)
		case flKeyIPProto:
			m.IPProto = ad.Uint8()
		case flKeyIPv4Src:
			ip4src = b
		case flKeyIPv4SrcMask:
			ip4srcm = b
		case flKeyIPv4Dst:
			ip4dst = b
		case flKeyIPv4DstMask:
			ip4dstm = b
		case flKeyIPv6Src:
			ip6src = b
		case flKeyIPv6SrcMask:
			ip6srcm = b
		case flKeyIPv6Dst:
			ip6dst = b
		case flKeyIPv6DstMask:
			ip6dstm = b
		case flKeyTCPDst, flKeyUDPDst, flKeySCTPDst:
			m.DstPortMin = binary.BigEndian.Uint16(b)
			m.DstPortMax = m.DstPortMin
		case flKeyTCPDstMask, flKeyUDPDstMask, flKeySCTPDstMask:
			if mask := binary.BigEndian.Uint16(b); mask != 0xFFFF {
				m.DstPortMask = mask
			}
		case flKeyPortDstMin:
			m.DstPortMin = binary.BigEndian.Uint16(b)
		case flKeyPortDstMax:
			m.DstPortMax = binary.BigEndian.Uint16(b)
		case flKeyICMPv4Type, flKeyICMPv6Type:
			m.HasICMPType, m.ICMPType = true, ad.Uint8()
		case flKeyICMPv4TypeMsk, flKeyICMPv6TypeMsk:
			if ad.Uint8() != 0xFF {
				ok = false
			}
		case flKeyCtState:
			m.CtState = ad.Uint16()
		case flKeyCtStateMask:
			m.CtStateMask = ad.Uint16()
		case flAct:
			if !decodeActions(b, f) {
				ok = false
			}
		default:
			ok = false
		}
	}
	if ad.Err() != nil {
		return false
	}
	var good bool
	if m.Src, good = prefixOf(ip4src, ip4srcm, ip6src, ip6srcm); !good {
		ok = false
	}
	if m.Dst, good = prefixOf(ip4dst, ip4dstm, ip6dst, ip6dstm); !good {
		ok = false
	}
	return ok
}

func prefixOf(a4, m4, a6, m6 []byte) (netip.Prefix, bool) {
	addr, mask := a4, m4
	if a6 != nil {
		addr, mask = a6, m6
	}
	if addr == nil {
		return netip.Prefix{}, true
	}
	a, ok := netip.AddrFromSlice(addr)
	if !ok || len(mask) != len(addr) {
		return netip.Prefix{}, false
	}
	bits := 0
	for _, c := range mask {
		for i := 7; i >= 0; i-- {
			if c&(1<<i) != 0 {
				bits++
			}
		}
	}
	p := netip.PrefixFrom(a, bits)
	if !equalBytes(maskBytes(bits, len(mask)), mask) {
		return p, false // not a prefix mask
	}
	return p, true
}

func equalBytes(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func decodeActions(data []byte, f *Filter) bool {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return false
	}
	ok := true
	for first := true; ad.Next(); first = false {
		if first {
			// Every packet the filter matches runs its first action, so
			// that action's counters are the filter's.
			f.Packets, f.Bytes = actionCounters(ad.Bytes())
		}
		a, cookie, good := decodeAction(ad.Bytes())
		if !good {
			ok = false
			continue
		}
		f.Actions = append(f.Actions, a)
		if cookie != nil {
			f.Cookie = cookie
		}
	}
	return ok && ad.Err() == nil
}

func decodeAction(data []byte) (Action, []byte, bool) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return Action{}, nil, false
	}
	var kind string
	var opts, cookie []byte
	for ad.Next() {
		switch ad.Type() {
		case tcaActKind:
			kind = ad.String()
		case tcaActOptions:
			opts = ad.Bytes()
		case tcaActCookie:
			cookie = append([]byte(nil), ad.Bytes()...)
		}
	}
	if ad.Err() != nil || opts == nil {
		return Action{}, nil, false
	}
	od, err := netlink.NewAttributeDecoder(opts)
	if err != nil {
		return Action{}, nil, false
	}
	switch kind {
	case "gact":
		for od.Next() {
			if od.Type() != tcaGactParms {
				continue
			}
			b := od.Bytes()
			if len(b) < 12 {
				return Action{}, nil, false
			}
			code := binary.NativeEndian.Uint32(b[8:])
			switch {
			case code == tcActOK:
				return Action{Kind: ActAccept}, cookie, true
			case code == tcActShot:
				return Action{Kind: ActDrop}, cookie, true
			case code&^tcActExtMask == tcActGotoChain:
				return Action{Kind: ActGoto, Chain: code & tcActExtMask}, cookie, true
			}
			return Action{}, nil, false
		}
	case "ct":
		a := Action{Kind: ActCt}
		for od.Next() {
			switch od.Type() {
			case tcaCtAction:
				fl := od.Uint16()
				a.Commit = fl&ctActCommit != 0
				if fl&^ctActCommit != 0 {
					return Action{}, nil, false
				}
			case tcaCtZone:
				a.Zone = od.Uint16()
			case tcaCtParms:
				b := od.Bytes()
				if len(b) < 12 || binary.NativeEndian.Uint32(b[8:]) != tcActPipe {
					return Action{}, nil, false
				}
			}
		}
		return a, cookie, od.Err() == nil
	}
	return Action{}, nil, false
}

// netlinkCreateExcl are the flags of `tc filter add`.
const netlinkCreateExcl = netlink.Acknowledge | netlink.Create | netlink.Excl

// actionCounters reads an action's packet and byte counters (TCA_ACT_STATS
// -> TCA_STATS_BASIC): software and, where the driver reports them at dump
// time (flower refreshes offloaded filters' stats then), hardware hits.
func actionCounters(data []byte) (packets, bytes uint64) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return 0, 0
	}
	for ad.Next() {
		if ad.Type() != tcaActStats {
			continue
		}
		sd, err := netlink.NewAttributeDecoder(ad.Bytes())
		if err != nil {
			return 0, 0
		}
		for sd.Next() {
			if b := sd.Bytes(); sd.Type() == tcaStatsBasic && len(b) >= 12 {
				return uint64(binary.NativeEndian.Uint32(b[8:12])), binary.NativeEndian.Uint64(b[0:8])
			}
		}
	}
	return 0, 0
}
