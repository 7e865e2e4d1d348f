package preflight

import (
	"encoding/binary"
	"testing"

	"github.com/vishvananda/netlink/nl"
)

// encodeBitset writes a verbose bitset as the kernel does
// (ethnl_put_bitset32): with nomask the listed bits are the set ones.
func encodeBitset(nomask bool, bits map[string]bool) []byte {
	var out []byte
	if nomask {
		out = append(out, attr(ethtoolABitsetNomask, nil)...)
	}
	var list []byte
	for name, v := range bits {
		fields := attr(ethtoolABitsetBitName, nl.ZeroTerminated(name))
		if v {
			fields = append(fields, attr(ethtoolABitsetBitValue, nil)...)
		}
		list = append(list, attr(ethtoolABitsetBitsBit|int(nl.NLA_F_NESTED), fields)...)
	}
	return append(out, attr(ethtoolABitsetBits|int(nl.NLA_F_NESTED), list)...)
}

func attr(typ int, data []byte) []byte {
	l := 4 + len(data)
	b := make([]byte, 4, (l+3)&^3)
	binary.NativeEndian.PutUint16(b[0:2], uint16(l))
	binary.NativeEndian.PutUint16(b[2:4], uint16(typ))
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func TestParseFeatures(t *testing.T) {
	reply := func(hw, active []byte) []byte {
		b := attr(ethtoolAFeaturesHeader|int(nl.NLA_F_NESTED), attr(ethtoolAHeaderDevName, nl.ZeroTerminated("ens1f0np0")))
		b = append(b, attr(ethtoolAFeaturesHW|int(nl.NLA_F_NESTED), hw)...)
		return append(b, attr(ethtoolAFeaturesActive|int(nl.NLA_F_NESTED), active)...)
	}
	list := func(names ...string) []byte {
		m := map[string]bool{}
		for _, n := range names {
			m[n] = true
		}
		return encodeBitset(true, m)
	}
	for _, tc := range []struct {
		name  string
		reply []byte
		want  Feature
	}{
		{"on", reply(list("rx-checksum", featureTCOffload), list(featureTCOffload, "tx-checksum-ipv4")), Feature{Active: true, Changeable: true}},
		{"off, changeable", reply(list(featureTCOffload), list("rx-checksum")), Feature{Changeable: true}},
		{"off [fixed]", reply(list("rx-checksum"), list("rx-checksum")), Feature{}},
		{"masked bitset: a listed bit without value is off", reply(encodeBitset(false, map[string]bool{featureTCOffload: true}),
			encodeBitset(false, map[string]bool{featureTCOffload: false, "rx-checksum": true})), Feature{Changeable: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseFeatures(tc.reply, featureTCOffload)
			if err != nil || got != tc.want {
				t.Errorf("got %+v, %v; want %+v", got, err, tc.want)
			}
			if got.String() != tc.want.String() {
				t.Errorf("String %q", got.String())
			}
		})
	}
	if _, err := parseFeatures([]byte{100, 0, ethtoolAFeaturesActive, 0, 0, 0, 0, 0}, featureTCOffload); err == nil {
		t.Error("attribute longer than the reply parsed")
	}
}
