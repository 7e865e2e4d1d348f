package sriov

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// NetdevExists asks the kernel over netlink, not sysfs, whether a netdev of
// that name exists in this network namespace: sysfs tells where a
// representor should be, netlink whether TC can be programmed on it.
func NetdevExists(name string) (bool, error) {
	_, err := netlink.LinkByName(name)
	if err == nil {
		return true, nil
	}
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return false, nil
	}
	return false, fmt.Errorf("look up netdev %s: %w", name, err)
}
