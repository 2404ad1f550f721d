package tunnel

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// gsoSegment returns a TCP segment as gVisor's TCP hands it to a link with
// host GSO: payload bytes of data, the pseudo-header sum (over the whole
// segment's length) in the checksum field, GSO options set.
func gsoSegment(v6 bool, payload int, mss uint16) *stack.PacketBuffer {
	data := make([]byte, payload)
	for i := range data {
		data[i] = byte(i * 13)
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: header.IPv6MinimumSize + header.TCPMinimumSize,
		Payload:            buffer.MakeWithData(data),
	})
	src, dst, gsoType, l3 := srv4, cli4, stack.GSOTCPv4, header.IPv4MinimumSize
	if v6 {
		src, dst, gsoType, l3 = srv6, cli6, stack.GSOTCPv6, header.IPv6MinimumSize
	}
	th := header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize))
	pkt.TransportProtocolNumber = header.TCPProtocolNumber
	th.Encode(&header.TCPFields{
		SrcPort: 5201, DstPort: 40000, SeqNum: 1, AckNum: 1,
		DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck | header.TCPFlagPsh, WindowSize: 65535,
	})
	th.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(pkt.Size())))
	nh := pkt.NetworkHeader().Push(l3)
	if v6 {
		pkt.NetworkProtocolNumber = header.IPv6ProtocolNumber
		header.IPv6(nh).Encode(&header.IPv6Fields{
			PayloadLength: uint16(header.TCPMinimumSize + payload), TransportProtocol: header.TCPProtocolNumber,
			HopLimit: 64, SrcAddr: src, DstAddr: dst,
		})
	} else {
		pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
		ip := header.IPv4(nh)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(pkt.Size()), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
			SrcAddr: src, DstAddr: dst,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	pkt.GSOOptions = stack.GSO{
		Type: gsoType, NeedsCsum: true, CsumOffset: header.TCPChecksumOffset,
		MSS: mss, L3HdrLen: uint16(l3), MaxSize: gsoMaxSize,
	}
	return pkt
}

// finishChecksum does what the kernel does with a NEEDS_CSUM frame: it
// sums the packet from csum_start, the field at csum_offset included (the
// pseudo-header sum gVisor left there), and stores the complement.
func finishChecksum(pkt []byte, csumStart, csumOffset int) {
	at := csumStart + csumOffset
	sum := checksum.Checksum(pkt[csumStart:], 0)
	binary.BigEndian.PutUint16(pkt[at:], ^sum)
}

// TestWriteGSO checks the frame writePacket writes for a 64 KiB TCPv4 and
// TCPv6 segment and for one no longer than the MSS: the virtio-net header
// bytes, then the packet, whose checksum is right once the kernel has
// finished it as the header asks.
func TestWriteGSO(t *testing.T) {
	const mss = 1448
	payload := gsoMaxSize - header.TCPTotalHeaderMaximumSize - 1 // gVisor's largest
	cases := []struct {
		name    string
		v6      bool
		payload int
		hdr     []byte // little-endian fields
	}{
		// flags NEEDS_CSUM, gso_type TCPV4, hdr_len 40, gso_size 1448, csum_start 20, csum_offset 16
		{"tcpv4 64k", false, payload, []byte{1, 1, 40, 0, 0xa8, 0x05, 20, 0, 16, 0}},
		// gso_type TCPV6, hdr_len 60, csum_start 40
		{"tcpv6 64k", true, payload, []byte{1, 4, 60, 0, 0xa8, 0x05, 40, 0, 16, 0}},
		// no more than the MSS: the checksum request alone
		{"tcpv4 mss", false, mss, []byte{1, 0, 40, 0, 0, 0, 20, 0, 16, 0}},
		{"tcpv6 small", true, 100, []byte{1, 0, 60, 0, 0, 0, 40, 0, 16, 0}},
	}
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the expected headers are little-endian")
	}
	fr := framePool.Get().(*frame)
	for _, c := range cases {
		pkt := gsoSegment(c.v6, c.payload, mss)
		if !isGSO(pkt) {
			t.Fatalf("%s: isGSO = false", c.name)
		}
		want := bytes.Clone(pkt.ToView().AsSlice())
		r := make(recorder, 2)
		if err := writePacket(r, fr, pkt); err != nil {
			t.Fatal(err)
		}
		pkt.DecRef()
		if len(r) != 1 {
			t.Fatalf("%s: %d writes, want 1", c.name, len(r))
		}
		f := <-r
		if got := f[:virtioNetHdrLen]; !bytes.Equal(got, c.hdr) {
			t.Errorf("%s: virtio-net header % x, want % x", c.name, got, c.hdr)
		}
		p := f[virtioNetHdrLen:]
		if !bytes.Equal(p, want) {
			t.Fatalf("%s: packet altered (%d bytes, want %d)", c.name, len(p), len(want))
		}
		if checksumsValid(p) {
			t.Errorf("%s: checksum complete before the kernel finished it", c.name)
		}
		finishChecksum(p, int(binary.NativeEndian.Uint16(f[6:])), int(binary.NativeEndian.Uint16(f[8:])))
		if !checksumsValid(p) {
			t.Errorf("%s: checksum wrong once finished", c.name)
		}
	}
}

// TestGSOFromStack checks that gVisor's TCP, on the link Open uses, sends
// segments larger than the MSS with host GSO options, and that the frames
// written for them carry a checksum the kernel can finish.
func TestGSOFromStack(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		r := make(recorder, 256)
		link := startLink(t, r)
		s := stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
		})
		if err := s.CreateNIC(1, link); err != nil {
			t.Fatal(err)
		}
		srv, cli, proto, subnet := srv4, cli4, ipv4.ProtocolNumber, header.IPv4EmptySubnet
		if v6 {
			srv, cli, proto, subnet = srv6, cli6, ipv6.ProtocolNumber, header.IPv6EmptySubnet
		}
		if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: srv.WithPrefix()}, stack.AddressProperties{}); err != nil {
			t.Fatal(err)
		}
		s.SetRouteTable([]tcpip.Route{{Destination: subnet, NIC: 1}})
		ln, err := gonet.ListenTCP(s, tcpip.FullAddress{NIC: 1, Addr: srv, Port: 5201}, proto)
		if err != nil {
			t.Fatal(err)
		}
		seg := func(seq, ack uint32, flags header.TCPFlags, opts []byte) []byte {
			b := make([]byte, header.TCPMinimumSize+len(opts))
			header.TCP(b).Encode(&header.TCPFields{
				SrcPort: 40000, DstPort: 5201, SeqNum: seq, AckNum: ack,
				DataOffset: uint8(len(b)), Flags: flags, WindowSize: 65535,
			})
			copy(b[header.TCPMinimumSize:], opts)
			if v6 {
				return ipv6Packet(header.TCPProtocolNumber, cli, srv, nil, b)
			}
			return ipv4Packet(header.TCPProtocolNumber, cli, srv, b)
		}
		inject := func(p []byte) {
			pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
			link.InjectInbound(proto, pb)
			pb.DecRef()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)

		const iss, mss = 1000, 1400
		inject(seg(iss, 0, header.TCPFlagSyn, []byte{2, 4, mss >> 8, mss & 0xff}))
		synAck := r.next(ctx)
		if synAck == nil {
			t.Fatal("no SYN-ACK")
		}
		v := synAck[virtioNetHdrLen:]
		var rh header.TCP
		if v6 {
			rh = header.TCP(header.IPv6(v).Payload())
		} else {
			rh = header.TCP(header.IPv4(v).Payload())
		}
		inject(seg(iss+1, rh.SequenceNumber()+1, header.TCPFlagAck, nil))
		conn, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		go conn.Write(make([]byte, 256<<10))

		var big int
		for range 20 {
			f := r.next(ctx)
			if f == nil {
				break
			}
			p := f[virtioNetHdrLen:]
			hl := header.IPv4MinimumSize
			if v6 {
				hl = header.IPv6MinimumSize
			}
			data := len(p) - hl - int(header.TCP(p[hl:]).DataOffset())
			if data > 0 && f[0] != unix.VIRTIO_NET_HDR_F_NEEDS_CSUM {
				t.Errorf("v6=%v: a data segment written without GSO options (virtio-net header % x)", v6, f[:virtioNetHdrLen])
			}
			if data <= mss {
				continue
			}
			big++
			wantType := byte(1)
			if v6 {
				wantType = 4
			}
			if f[0] != 1 || f[1] != wantType || binary.NativeEndian.Uint16(f[4:]) != mss {
				t.Errorf("v6=%v: virtio-net header % x: want NEEDS_CSUM, type %d, gso_size %d", v6, f[:virtioNetHdrLen], wantType, mss)
			}
			finishChecksum(p, int(binary.NativeEndian.Uint16(f[6:])), int(binary.NativeEndian.Uint16(f[8:])))
			if !checksumsValid(p) {
				t.Errorf("v6=%v: checksum wrong once finished", v6)
			}
			break
		}
		if big == 0 {
			t.Errorf("v6=%v: gVisor sent no segment larger than the MSS", v6)
		}
		cancel()
		conn.Close()
		ln.Close()
		s.Close()
		s.Wait()
	}
}
