package datapath

import (
	"bytes"
	"fmt"

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
