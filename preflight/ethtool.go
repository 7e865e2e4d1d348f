package preflight

import (
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// hw-tc-offload is read with ETHTOOL_MSG_FEATURES_GET of the ethtool
// generic netlink family (Linux 5.6+), what `ethtool -k` sends. No library
// in go.mod speaks it: vishvananda/netlink has no ethtool calls beyond the
// stats ioctl, mdlayher/netlink has no genetlink (that is
// mdlayher/genetlink, not a dependency), and mdlayher/ethtool, which would
// bring both, has link info, modes, state, FEC, WoL and private flags but
// no features. So this is the one request, on the genetlink plumbing
// vishvananda/netlink already has for devlink (family lookup, request,
// attribute parsing). Bitsets are asked for in the verbose form, which
// names each bit: feature bit numbers are not ABI, names are.

// From include/uapi/linux/ethtool_netlink.h.
const (
	ethtoolGenlName    = "ethtool"
	ethtoolGenlVersion = 1

	ethtoolMsgFeaturesGet = 11

	ethtoolAHeaderDevName = 2

	ethtoolAFeaturesHeader = 1
	ethtoolAFeaturesHW     = 2 // what the driver lets be changed
	ethtoolAFeaturesActive = 4

	ethtoolABitsetNomask = 1
	ethtoolABitsetBits   = 3

	ethtoolABitsetBitsBit = 1

	ethtoolABitsetBitName  = 2
	ethtoolABitsetBitValue = 3
)

// featureTCOffload is NETIF_F_HW_TC's name in netdev_features_strings.
const featureTCOffload = "hw-tc-offload"

// TCOffload implements Host.
func (System) TCOffload(netdev string) (Feature, error) { return feature(netdev, featureTCOffload) }

// feature reads one feature of a netdev by its ethtool name.
func feature(netdev, name string) (Feature, error) {
	fam, err := netlink.GenlFamilyGet(ethtoolGenlName)
	if err != nil {
		return Feature{}, fmt.Errorf("netdev %s: ethtool netlink family (Linux 5.6+, CONFIG_ETHTOOL_NETLINK): %w", netdev, err)
	}
	req := nl.NewNetlinkRequest(int(fam.ID), unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: ethtoolMsgFeaturesGet, Version: ethtoolGenlVersion})
	hdr := nl.NewRtAttr(ethtoolAFeaturesHeader|int(nl.NLA_F_NESTED), nil)
	hdr.AddRtAttr(ethtoolAHeaderDevName, nl.ZeroTerminated(netdev))
	req.AddData(hdr)
	msgs, err := req.Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return Feature{}, fmt.Errorf("netdev %s: ethtool features: %w", netdev, err)
	}
	if len(msgs) == 0 || len(msgs[0]) < nl.SizeofGenlmsg {
		return Feature{}, fmt.Errorf("netdev %s: ethtool features: empty answer", netdev)
	}
	return parseFeatures(msgs[0][nl.SizeofGenlmsg:], name)
}

// parseFeatures reads one feature from a FEATURES_GET reply's attributes.
func parseFeatures(b []byte, name string) (Feature, error) {
	attrs, err := nl.ParseRouteAttr(b)
	if err != nil {
		return Feature{}, fmt.Errorf("ethtool features: %w", err)
	}
	var f Feature
	for _, a := range attrs {
		var into *bool
		switch a.Attr.Type & nl.NLA_TYPE_MASK {
		case ethtoolAFeaturesHW:
			into = &f.Changeable
		case ethtoolAFeaturesActive:
			into = &f.Active
		default:
			continue
		}
		set, err := bitsetHas(a.Value, name)
		if err != nil {
			return Feature{}, fmt.Errorf("ethtool features: %w", err)
		}
		*into = set
	}
	return f, nil
}

// bitsetHas tells whether the named bit is set in a verbose bitset: with
// ETHTOOL_A_BITSET_NOMASK, the bits listed are the set ones; without, each
// listed bit is set when it carries ETHTOOL_A_BITSET_BIT_VALUE.
func bitsetHas(b []byte, name string) (bool, error) {
	attrs, err := nl.ParseRouteAttr(b)
	if err != nil {
		return false, err
	}
	nomask := false
	var bits []syscall.NetlinkRouteAttr
	for _, a := range attrs {
		switch a.Attr.Type & nl.NLA_TYPE_MASK {
		case ethtoolABitsetNomask:
			nomask = true
		case ethtoolABitsetBits:
			if bits, err = nl.ParseRouteAttr(a.Value); err != nil {
				return false, err
			}
		}
	}
	for _, bit := range bits {
		if bit.Attr.Type&nl.NLA_TYPE_MASK != ethtoolABitsetBitsBit {
			continue
		}
		fields, err := nl.ParseRouteAttr(bit.Value)
		if err != nil {
			return false, err
		}
		var bitName string
		value := false
		for _, f := range fields {
			switch f.Attr.Type & nl.NLA_TYPE_MASK {
			case ethtoolABitsetBitName:
				bitName = nl.BytesToString(f.Value)
			case ethtoolABitsetBitValue:
				value = true
			}
		}
		if bitName == name {
			return nomask || value, nil
		}
	}
	return false, nil
}
