//go:build !linux

package wake

import "errors"

// watchNetwork: only Linux has netlink.
func (w *Watcher) watchNetwork() (<-chan string, error) {
	return nil, errors.New("wake: following the network needs Linux (netlink)")
}
