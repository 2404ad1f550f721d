package netstack

import (
	"fmt"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// ListenUDP opens a UDP socket on addr inside the stack, for a service
// kubetun itself answers (its DNS server). addr's IP becomes one of the
// stack's own addresses: datagrams to addr reach the socket instead of the
// forwarder.
func (s *Stack) ListenUDP(addr netip.AddrPort) (net.PacketConn, error) {
	fa, proto, err := s.own(addr)
	if err != nil {
		return nil, err
	}
	c, err := gonet.DialUDP(s.stack, &fa, nil, proto)
	if err != nil {
		return nil, fmt.Errorf("netstack: listening on udp %s: %w", addr, err)
	}
	return c, nil
}

// ListenTCP is ListenUDP for TCP.
func (s *Stack) ListenTCP(addr netip.AddrPort) (net.Listener, error) {
	fa, proto, err := s.own(addr)
	if err != nil {
		return nil, err
	}
	ln, err := gonet.ListenTCP(s.stack, fa, proto)
	if err != nil {
		return nil, fmt.Errorf("netstack: listening on tcp %s: %w", addr, err)
	}
	return ln, nil
}

// own makes addr's IP an address of the NIC (once) and returns it in
// gVisor's terms.
func (s *Stack) own(addr netip.AddrPort) (tcpip.FullAddress, tcpip.NetworkProtocolNumber, error) {
	ip := addr.Addr().Unmap()
	proto := header.IPv4ProtocolNumber
	if ip.Is6() {
		proto = header.IPv6ProtocolNumber
	}
	pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(ip.AsSlice()).WithPrefix()}
	if err := s.stack.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		if _, dup := err.(*tcpip.ErrDuplicateAddress); !dup {
			return tcpip.FullAddress{}, 0, fmt.Errorf("netstack: AddProtocolAddress(%d, %s): %s", nicID, ip, err)
		}
	}
	return tcpip.FullAddress{NIC: nicID, Addr: pa.AddressWithPrefix.Address, Port: addr.Port()}, proto, nil
}
