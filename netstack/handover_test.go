package netstack

import (
	"bytes"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	corev1 "k8s.io/api/core/v1"
)

// recorder is a Forwarder that keeps what it is given.
type recorder struct {
	mu   sync.Mutex
	pkts [][]byte
}

func (r *recorder) Forward(pkt []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pkts = append(r.pkts, bytes.Clone(pkt))
	return true
}

func (r *recorder) got() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pkts
}

// waitForwarded waits until r holds n packets.
func waitForwarded(t *testing.T, r *recorder, n int) [][]byte {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(r.got()) < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := r.got(); len(got) != n {
		t.Fatalf("forwarded %d packets, want %d", len(got), n)
	}
	return r.got()
}

// TestForwardToPredecessor: with a predecessor, what the stack would
// reset goes to it — a segment of no flow of the stack's, the SYN of a
// connection the predecessor was setting up, a datagram of one of its UDP
// sessions — and nothing else: a new SYN, a datagram of another session.
// Without one, the stack resets as before.
func TestForwardToPredecessor(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := new(fakeDialer)
			startPod(t, d, fam.pod, echo)
			tab := buildTable(t, testService{name: "service-test", ip: fam.clusterIP,
				ports: []testPort{{corev1.ProtocolTCP, 80, 8080}}, eps: []netip.Addr{fam.pod.Addr()}})
			ns, link := newTestStack(t, tab, d)
			svc := netip.AddrPortFrom(fam.clusterIP, 80)
			setup := netip.AddrPortFrom(fam.client.Addr(), 41000)
			session := netip.AddrPortFrom(fam.client.Addr(), 42000)
			pred := new(recorder)
			ns.SetPredecessor(pred, Handed{
				TCPSetups:   []FlowID{{Src: setup, Dst: svc}},
				UDPSessions: []FlowID{{Src: session, Dst: svc}},
			})

			// A data segment of a flow the stack does not have.
			data := tcpPacket(fam.client, svc, 1000, 2000, header.TCPFlagAck|header.TCPFlagPsh, []byte("old flow"))
			inject(link, data)
			got := waitForwarded(t, pred, 1)
			if !bytes.Equal(got[0], data) {
				t.Errorf("forwarded % x, want % x", got[0], data)
			}
			expectSilence(t, link, 50*time.Millisecond) // no RST of its own

			// The SYN of the predecessor's connection being set up.
			syn := tcpPacket(setup, svc, 1, 0, header.TCPFlagSyn, nil)
			inject(link, syn)
			waitForwarded(t, pred, 2)

			// A datagram of one of its sessions, and one of another.
			if !ns.DeliverUDP(udpPacket(session, svc, []byte("its session"))) {
				t.Error("DeliverUDP declined a datagram of the predecessor's session")
			}
			waitForwarded(t, pred, 3)
			if ns.DeliverUDP(udpPacket(fam.client, svc, []byte("new session"))) {
				t.Error("DeliverUDP took a datagram of a session nobody has")
			}
			// Sent back by the predecessor: it has no session (any more).
			if !ns.ForgetHandedUDP(udpPacket(session, svc, []byte("returned"))) {
				t.Error("ForgetHandedUDP: not UDP?")
			}
			if ns.DeliverUDP(udpPacket(session, svc, []byte("after return"))) {
				t.Error("DeliverUDP passed on a datagram of a session the predecessor gave back")
			}

			// A new SYN is the stack's own: a SYN-ACK comes back.
			inject(link, tcpPacket(fam.client, svc, 5000, 0, header.TCPFlagSyn, nil))
			_, _, seg := readTCP(t, link)
			if seg.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
				t.Errorf("answer to a new SYN: flags %v, want SYN-ACK", seg.Flags())
			}
			if n := len(pred.got()); n != 3 {
				t.Errorf("forwarded %d packets, want 3", n)
			}
			if st := ns.HandedStats(); st.Packets != 3 || st.Bytes == 0 {
				t.Errorf("HandedStats() = %+v, want 3 packets", st)
			}

			// Without the predecessor, an unknown segment is reset again.
			ns.ClearPredecessor()
			inject(link, tcpPacket(netip.AddrPortFrom(fam.client.Addr(), 43000), svc, 1000, 2000, header.TCPFlagAck, []byte("x")))
			if _, _, seg := readTCP(t, link); !seg.Flags().Contains(header.TCPFlagRst) {
				t.Errorf("after ClearPredecessor: flags %v, want RST", seg.Flags())
			}
		})
	}
}

// TestHandOver: a predecessor lists its sessions, refuses new connections
// and sends back what no session of its takes; TakeBack undoes it.
func TestHandOver(t *testing.T) {
	d := new(fakeDialer)
	pod := startUDPPod(t, d, pod1, "pod1")
	tab := buildTable(t, udpService(clusterIP, pod1))
	ns, link := newTestStack(t, tab, d)
	svc := netip.AddrPortFrom(clusterIP, 80)
	inject(link, udpPacket(client, svc, []byte("first")))
	received(t, pod)
	readUDP(t, link)

	back := new(recorder)
	h := ns.HandOver(back)
	if len(h.UDPSessions) != 1 || h.UDPSessions[0] != (FlowID{client, svc}) {
		t.Errorf("HandOver() UDP sessions = %v, want [%v → %v]", h.UDPSessions, client, svc)
	}
	if !ns.DeliverUDP(udpPacket(client, svc, []byte("its own"))) {
		t.Error("a handed-over stack declined a datagram of its own session")
	}
	if dg := received(t, pod); dg.data != "its own" {
		t.Errorf("pod got %q", dg.data)
	}
	other := netip.AddrPortFrom(client.Addr(), client.Port()+1)
	if !ns.DeliverUDP(udpPacket(other, svc, []byte("not its"))) {
		t.Error("a handed-over stack let a new session's datagram through to gVisor")
	}
	waitForwarded(t, back, 1)

	ns.TakeBack()
	if ns.DeliverUDP(udpPacket(other, svc, []byte("new again"))) {
		t.Error("after TakeBack, a new session's datagram was not left to gVisor")
	}
}
