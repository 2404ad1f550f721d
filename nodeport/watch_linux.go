package nodeport

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
)

// AddressWatch keeps the host's interface addresses, as netlink reports
// their changes: node ports on --nodeport-addresses CIDRs follow them
// without listing the host's addresses on every table update.
type AddressWatch struct {
	addrs atomic.Pointer[[]netip.Addr]
	done  chan struct{}
	wg    sync.WaitGroup
}

// WatchAddresses lists the host's addresses and follows their changes;
// onChange is called, from the watch's goroutine, after each change that
// alters the list. Close ends it.
func WatchAddresses(onChange func()) (*AddressWatch, error) {
	w := &AddressWatch{done: make(chan struct{})}
	ch := make(chan netlink.AddrUpdate, 64)
	if err := netlink.AddrSubscribeWithOptions(ch, w.done, netlink.AddrSubscribeOptions{}); err != nil {
		return nil, fmt.Errorf("following the node's addresses (netlink): %w", err)
	}
	if err := w.list(); err != nil {
		close(w.done)
		return nil, err
	}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for range ch { // closed once done is
			before := w.Addrs()
			// List again rather than apply the update: updates can be
			// lost when the socket's buffer overflows, a list cannot.
			if w.list() == nil && !slices.Equal(before, w.Addrs()) && onChange != nil {
				onChange()
			}
		}
	}()
	return w, nil
}

// list reads the host's addresses.
func (w *AddressWatch) list() error {
	as, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("listing the node's addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	out = slices.Compact(out)
	w.addrs.Store(&out)
	return nil
}

// Addrs returns the host's addresses now, sorted.
func (w *AddressWatch) Addrs() []netip.Addr { return *w.addrs.Load() }

// Close ends the watch and waits for its goroutine.
func (w *AddressWatch) Close() {
	close(w.done)
	w.wg.Wait()
}
