package datapath

import (
	"bytes"
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// drvinfo returns the driver version, firmware version, bus info and
// driver name of dev (ethtool -i).
func drvinfo(dev string) ([4]string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return [4]string{}, err
	}
	defer func() { _ = unix.Close(fd) }()
	di, err := unix.IoctlGetEthtoolDrvinfo(fd, dev)
	if err != nil {
		return [4]string{}, fmt.Errorf("ethtool -i %s: %w", dev, err)
	}
	str := func(b []byte) string { return string(bytes.TrimRight(b, "\x00")) }
	return [4]string{str(di.Version[:]), str(di.Fw_version[:]), str(di.Bus_info[:]), str(di.Driver[:])}, nil
}

// ethtool ioctl commands and the feature string set (linux/ethtool.h).
const (
	ethtoolGSSetInfo = 0x37
	ethtoolGStrings  = 0x1b
	ethtoolGFeatures = 0x3a
	ethSSFeatures    = 4
	ethGStringLen    = 32
)

// ifreqData is struct ifreq with ifr_data (x/sys keeps its own private).
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [16]byte
}

func ethtoolIoctl(fd int, dev string, data unsafe.Pointer) error {
	var ifr ifreqData
	copy(ifr.name[:], dev)
	ifr.data = data
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); e != 0 {
		return e
	}
	return nil
}

// ethtoolFeature returns "on" or "off" for the named feature of dev, as
// `ethtool -k DEV` prints it (hw-tc-offload).
func ethtoolFeature(dev, name string) (string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer func() { _ = unix.Close(fd) }()
	// How many features the device's string set has.
	info := struct {
		cmd, reserved uint32
		mask          uint64
		data          uint32
	}{cmd: ethtoolGSSetInfo, mask: 1 << ethSSFeatures}
	if err := ethtoolIoctl(fd, dev, unsafe.Pointer(&info)); err != nil {
		return "", fmt.Errorf("ethtool feature names of %s: %w", dev, err)
	}
	n := int(info.data)
	if info.mask == 0 || n == 0 {
		return "", errors.New("no feature names")
	}
	// Their names.
	strs := make([]byte, 12+n*ethGStringLen)
	*(*uint32)(unsafe.Pointer(&strs[0])) = ethtoolGStrings
	*(*uint32)(unsafe.Pointer(&strs[4])) = ethSSFeatures
	*(*uint32)(unsafe.Pointer(&strs[8])) = uint32(n)
	if err := ethtoolIoctl(fd, dev, unsafe.Pointer(&strs[0])); err != nil {
		return "", fmt.Errorf("ethtool feature names of %s: %w", dev, err)
	}
	bit := -1
	for i := 0; i < n; i++ {
		s := strs[12+i*ethGStringLen : 12+(i+1)*ethGStringLen]
		if string(bytes.TrimRight(s, "\x00")) == name {
			bit = i
			break
		}
	}
	if bit < 0 {
		return "", fmt.Errorf("%s has no feature %s", dev, name)
	}
	// Their values: struct ethtool_gfeatures { cmd, size; features[size] {available, requested, active, never_changed} }.
	words := (n + 31) / 32
	feats := make([]uint32, 2+4*words)
	feats[0], feats[1] = ethtoolGFeatures, uint32(words)
	if err := ethtoolIoctl(fd, dev, unsafe.Pointer(&feats[0])); err != nil {
		return "", fmt.Errorf("ethtool -k %s: %w", dev, err)
	}
	active := feats[2+4*(bit/32)+2]
	if active&(1<<(bit%32)) != 0 {
		return "on", nil
	}
	return "off", nil
}
