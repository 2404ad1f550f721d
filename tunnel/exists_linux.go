package tunnel

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// LinkKind returns the kind of the network device name ("tuntap" for a TUN,
// as `ip -d link` says), and whether there is one. Open attaches to an
// existing TUN of that name; a caller that must only ever use a device of
// its own asks first.
func LinkKind(name string) (kind string, exists bool, err error) {
	l, err := netlink.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		return "", false, nil
	case err != nil:
		return "", false, fmt.Errorf("looking up network device %s: %w", name, err)
	}
	return l.Type(), true, nil
}
