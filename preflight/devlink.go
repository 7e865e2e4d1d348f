package preflight

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
)

// EswitchMode implements Host with devlink's DEVLINK_CMD_ESWITCH_GET.
// vishvananda/netlink reads the mode after the device and drops that
// second answer's error: a device without eswitch ops (or an error there)
// comes back with no mode, which the preflight reports as "no eswitch".
func (System) EswitchMode(dl DevlinkHandle) (string, error) {
	dev, err := netlink.DevLinkGetDeviceByName(dl.Bus, dl.Name)
	if err != nil {
		return "", devlinkError(dl, err)
	}
	return dev.Attrs.Eswitch.Mode, nil
}

// DevlinkParam implements Host. The device's parameters are dumped and
// searched, so that "the driver has no such parameter" (absent from the
// dump) is told apart from an error (a get by name answers EINVAL for both).
func (System) DevlinkParam(dl DevlinkHandle, name string) (string, bool, error) {
	params, err := netlink.DevlinkGetDeviceParams(dl.Bus, dl.Name)
	if err != nil {
		return "", false, fmt.Errorf("parameters: %w", devlinkError(dl, err))
	}
	for _, p := range params {
		if p.Name != name {
			continue
		}
		return paramValue(p), true, nil
	}
	return "", false, nil
}

// paramValue prefers the runtime value, then driverinit, then permanent.
func paramValue(p *netlink.DevlinkParam) string {
	for _, cmode := range []uint8{nl.DEVLINK_PARAM_CMODE_RUNTIME, nl.DEVLINK_PARAM_CMODE_DRIVERINIT, nl.DEVLINK_PARAM_CMODE_PERMANENT} {
		for _, v := range p.Values {
			if v.CMODE == cmode {
				return fmt.Sprint(v.Data)
			}
		}
	}
	return ""
}

// devlinkError names the device, and wraps ErrNoDevlink where the kernel
// says there is no such devlink device (ENODEV) or no devlink family at
// all (ENOENT from the genetlink controller: CONFIG_NET_DEVLINK off, as on
// a VM without SR-IOV NICs).
func devlinkError(dl DevlinkHandle, err error) error {
	if errors.Is(err, syscall.ENODEV) || errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("devlink device %s: %w (%w)", dl, ErrNoDevlink, err)
	}
	return fmt.Errorf("devlink device %s: %w", dl, err)
}
