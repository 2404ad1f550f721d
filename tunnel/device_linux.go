package tunnel

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// queueLen is the number of packets gVisor may queue for the TUN's writer
// before its senders wait: enough for the RSTs of many flows at once
// (netstack's Close waits for them to leave).
const queueLen = 1024

// DefaultMTU is the TUN's default MTU. It is as large as a TUN allows rather
// than Ethernet's 1500: every packet costs a trip through the pump and
// gVisor, so fewer, larger packets carry more. A node-local client then
// sends up to 64 KiB per packet (measured with iperf3 from a node-local client: 3.3 → 8.9 Gbit/s);
// clients behind a 1500-byte pod link still negotiate their own, smaller MSS,
// so nothing is fragmented.
const DefaultMTU = 65520

// Device is kubetun's TUN device: the kernel side (link, routes) and the
// pump that carries packets between it and a gVisor link endpoint.
type Device struct {
	tun   tun.Device
	name  string
	index int
	link  *link
	log   *slog.Logger
	udp   atomic.Pointer[func([]byte) bool] // SetUDPHandler's
	tcp   atomic.Pointer[func([]byte) bool] // SetTCPFilter's

	wg sync.WaitGroup // the inbound pump and the event drain

	mu      sync.Mutex // guards the fields below
	routes  []netip.Prefix
	persist bool // Persist was called: Close leaves the device and its routes
	handoff bool // HandOff was called: Close leaves the device and its routes to the new owner
	closed  bool
	reading chan struct{} // the inbound pump runs, and closes this when it ends; nil when it does not

	gone     chan struct{} // closed when the TUN is lost without Close
	goneErr  error         // why; set before gone is closed
	goneOnce sync.Once
}

// Gone returns a channel that is closed when the TUN device stops working
// while still open: deleted underneath (ip link del), so that nothing
// routed to it arrives any more. Err then says why. Nothing is recreated:
// the routes went with the device, and the caller decides (kubetun exits).
func (d *Device) Gone() <-chan struct{} { return d.gone }

// Err returns why the device is gone, once Gone is closed; nil before.
func (d *Device) Err() error {
	select {
	case <-d.gone:
		return d.goneErr
	default:
		return nil
	}
}

// lost reports that the TUN failed with err, unless Close caused it.
func (d *Device) lost(err error) {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return
	}
	d.goneOnce.Do(func() {
		d.goneErr = fmt.Errorf("TUN %s: reading: %w (was the device deleted?)", d.name, err)
		d.log.Error("TUN device lost; no traffic reaches kubetun any more", "tun", d.name, "err", err)
		close(d.gone)
	})
}

// Open creates the TUN device name with the given MTU and brings it up.
// Packets read from it reach the link endpoint that Link returns once Start
// is called; until then they wait in the device's queue, or are dropped
// there when it is full. What gVisor sends through the link is written to
// the device at once. It adds no route: call SetRoutes.
//
// If a persistent TUN of that name is left from an earlier kubetun (see
// Persist), Open attaches to it instead, with the same flags, and the
// routes it still has stay until SetRoutes replaces them.
func Open(name string, mtu int, log *slog.Logger) (*Device, error) {
	if mtu < 1280 || mtu > 65535 {
		return nil, fmt.Errorf("MTU %d out of range [1280, 65535]", mtu)
	}
	existing := ExistingIndex(name) != 0
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrPermission), errors.Is(err, unix.EPERM):
			return nil, fmt.Errorf("creating TUN %s: %w (kubetun needs root or CAP_NET_ADMIN)", name, err)
		case errors.Is(err, unix.EBUSY):
			return nil, fmt.Errorf("creating TUN %s: %w (another process holds it: a kubetun running with --tun %s that cannot hand it over, or another program)", name, err, name)
		}
		return nil, fmt.Errorf("creating TUN %s: %w", name, err)
	}
	d, err := newDevice(dev, name, mtu, log)
	if err != nil {
		return nil, err
	}
	if existing {
		l, _ := netlink.LinkByIndex(d.index)
		routes, _ := linkRoutes(l)
		log.Info("attached to the existing TUN device; its routes stay until the service CIDRs are known",
			"tun", d.name, "routes", fmt.Sprint(routes))
	}
	return d, nil
}

// OpenFile is Open for a TUN file descriptor another process opened and
// passed on (a kubetun handing over to its successor): the device, its
// routes and the packets waiting in its queue stay as they are. The
// descriptor must carry virtio-net headers (IFF_VNET_HDR), as Open's do.
// f belongs to the Device from now on.
func OpenFile(f *os.File, mtu int, log *slog.Logger) (*Device, error) {
	if mtu < 1280 || mtu > 65535 {
		f.Close()
		return nil, fmt.Errorf("MTU %d out of range [1280, 65535]", mtu)
	}
	// The poller needs a non-blocking descriptor; the flag belongs to the
	// open file, which the old owner shares, and is set there already.
	rc, err := f.SyscallConn()
	if err == nil {
		var nbErr error
		err = rc.Control(func(fd uintptr) { nbErr = unix.SetNonblock(int(fd), true) })
		err = errors.Join(err, nbErr)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("TUN descriptor passed on: %w", err)
	}
	dev, err := tun.CreateTUNFromFile(f, mtu)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("TUN descriptor passed on: %w", err)
	}
	name, _ := dev.Name()
	return newDevice(dev, name, mtu, log)
}

// newDevice sets dev up as kubetun's Device: offloads, link up, the link
// endpoint and its writer.
func newDevice(dev tun.Device, name string, mtu int, log *slog.Logger) (*Device, error) {
	if err := tcpOffloadsOnly(dev.File()); err != nil {
		dev.Close()
		return nil, fmt.Errorf("setting up TUN %s: %w", name, err)
	}
	d := &Device{tun: dev, name: name, log: log, gone: make(chan struct{})}
	if real, err := dev.Name(); err == nil {
		d.name = real
	}
	l, err := netlink.LinkByName(d.name)
	if err == nil {
		err = netlink.LinkSetUp(l)
	}
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("bringing up %s: %w", d.name, err)
	}
	d.index = l.Attrs().Index
	w, err := newFileWriter(dev.File())
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("setting up TUN %s: no access to its file descriptor: %w", d.name, err)
	}
	d.link = newLink(mtu, w, queueLen)

	d.wg.Add(2)
	go d.drainEvents()
	go func() { defer d.wg.Done(); d.link.write() }()
	return d, nil
}

// Start starts pumping packets from the device into the link endpoint.
// Call it once what is behind the link can answer: a SYN read before the
// service table is loaded would be refused, while one left in the device
// is retransmitted by the client. Calls while the pump runs do nothing;
// after Pause, Start starts it again.
func (d *Device) Start() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.reading != nil {
		return
	}
	d.tun.File().SetReadDeadline(time.Time{})
	done := make(chan struct{})
	d.reading = done
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(done)
		d.inbound()
	}()
}

// Pause stops the pump and returns once it has handed what it read to
// gVisor: from then on packets wait in the device's queue, for Start or
// for another process that holds the device (HandOff). The link still
// writes what gVisor sends.
func (d *Device) Pause() {
	d.mu.Lock()
	done := d.reading
	if done == nil {
		d.mu.Unlock()
		return
	}
	d.mu.Unlock()
	// The pump waits in the poller; a deadline in the past wakes it.
	d.tun.File().SetReadDeadline(time.Now())
	<-done
	d.mu.Lock()
	d.reading = nil
	d.mu.Unlock()
}

// File returns the TUN's file, to pass its descriptor to another process
// (HandOff). The Device keeps it.
func (d *Device) File() *os.File { return d.tun.File() }

// HandOff leaves the device and its routes to another process that holds
// the device's descriptor: Close then only closes this process's
// descriptor, whatever Persist said.
func (d *Device) HandOff() {
	d.mu.Lock()
	d.handoff = true
	d.mu.Unlock()
}

// Inject hands pkt, a whole IP packet from elsewhere than the TUN (the
// process the device was handed to passes on packets of flows this one
// still serves), to gVisor, or to the UDP handler first (SetUDPHandler),
// as the pump does with what it reads. Its checksums are trusted: the
// sender read it from the TUN and checked them.
func (d *Device) Inject(pkt []byte) {
	if IsUDP(pkt) {
		if h := d.udp.Load(); h != nil && (*h)(pkt) {
			return
		}
	}
	if proto, ok := networkProtocol(pkt); ok {
		inject(d.link, proto, pkt)
	}
}

// tcpOffloadsOnly checks that the TUN frames its packets with virtio-net
// headers, which the pump reads and writes, and lets the kernel hand it
// unsegmented TCP (TSO) but not UDP (USO, which wireguard's tun enables
// where the kernel has it): the inbound pump passes large TCP segments to
// gVisor whole, and gVisor has no use for a UDP super-datagram. Writes are
// not affected: the kernel takes any GSO type from userspace.
func tcpOffloadsOnly(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	err = rc.Control(func(fd uintptr) {
		var ifr *unix.Ifreq
		if ifr, ioErr = unix.NewIfreq(""); ioErr != nil {
			return
		}
		if ioErr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr); ioErr != nil {
			ioErr = fmt.Errorf("TUNGETIFF: %w", ioErr)
			return
		}
		if ifr.Uint16()&unix.IFF_VNET_HDR == 0 {
			ioErr = errors.New("the device has no virtio-net headers (IFF_VNET_HDR)")
			return
		}
		if ioErr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_TSO4|unix.TUN_F_TSO6); ioErr != nil {
			ioErr = fmt.Errorf("TUNSETOFFLOAD: %w", ioErr)
		}
	})
	return errors.Join(err, ioErr)
}

// Name returns the device's name.
func (d *Device) Name() string { return d.name }

// Index returns the device's interface index.
func (d *Device) Index() int { return d.index }

// Link returns the gVisor link endpoint the device feeds.
func (d *Device) Link() stack.LinkEndpoint { return d.link }

// SetRoutes makes the routes into the device exactly cidrs. A CIDR not
// routed here yet is refused if it overlaps another route on the host.
func (d *Device) SetRoutes(cidrs []netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("tunnel: device closed")
	}
	if err := CheckOverlap(cidrs, d.index); err != nil {
		return err
	}
	l, err := netlink.LinkByIndex(d.index)
	if err != nil {
		return fmt.Errorf("finding %s: %w", d.name, err)
	}
	if err := setRoutes(l, cidrs, d.persist); err != nil {
		return err
	}
	d.routes = cidrs
	return nil
}

// Close stops the pump and, unless Persist was called, removes the routes
// and deletes the TUN device. It returns when every goroutine Open started
// has ended.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	var errs []error
	if !d.persist && !d.handoff {
		// Also removes what an earlier kubetun --persist left: the device
		// Open attached to may be persistent, and fallback routes may be
		// there though this process added none.
		if l, err := netlink.LinkByIndex(d.index); err == nil {
			errs = append(errs, setRoutes(l, nil, false))
		}
		if d.Err() == nil { // a device deleted underneath has no flag to clear
			errs = append(errs, setPersist(d.tun.File(), false))
		}
	}
	d.mu.Unlock()

	d.link.close() // ends the link's writer; what gVisor sends from now on is dropped
	// Ends inbound and the event drain; the kernel deletes a device that
	// is not persistent.
	err := d.tun.Close()
	d.wg.Wait()
	errs = append(errs, err)
	return errors.Join(errs...)
}

// drainEvents reads the device's event channel, which wireguard's tun
// package feeds and nobody else reads, and notes MTU and state changes.
func (d *Device) drainEvents() {
	defer d.wg.Done()
	for ev := range d.tun.Events() {
		switch {
		case ev&tun.EventDown != 0:
			d.log.Warn("TUN device is down", "tun", d.name)
		case ev&tun.EventMTUUpdate != 0:
			if mtu, err := d.tun.MTU(); err == nil {
				d.log.Debug("TUN MTU changed", "tun", d.name, "mtu", mtu)
			}
		}
	}
}
