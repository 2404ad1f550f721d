package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/kubetun/kubetun/handover"
	"github.com/kubetun/kubetun/netstack"
)

// Taking over from a running kubetun, and handing over to a new one
// (package handover): an upgrade or a restart cuts no connection.
//
// As a successor, a Proxy asks the kubetun serving its TUN for its
// descriptors before it opens anything (Run), uses them instead of opening
// its own (start), and, once its first whole state is served and routed,
// has the predecessor stop reading the TUN and reads it itself (serve). From
// then on its stack passes the packets of the predecessor's flows on, until
// the predecessor exits.
//
// As a predecessor, a serving Proxy listens on its handover socket; a
// successor that connects gets the descriptors, and once it serves, this
// Proxy stops its source and its listening, and waits for its last flow
// (retired), SIGTERM then bounding the wait by Config.DrainTimeout.

// handoverDataplane is a Dataplane that can hand over and take over: the
// host's.
type handoverDataplane interface {
	Dataplane
	// File is the TUN's file, to pass on.
	File() *os.File
	// Pause stops reading the TUN; Start reads it again.
	Pause()
	// HandOff leaves the TUN and its routes to the successor.
	HandOff()
	// Inject hands a packet of this process's flows, passed on by the
	// successor, to the stack.
	Inject(pkt []byte)
	HandOver(back netstack.Forwarder) netstack.Handed
	TakeBack()
	SetPredecessor(fwd netstack.Forwarder, h netstack.Handed)
	ClearPredecessor()
	ForgetHandedUDP(pkt []byte) bool
	WaitIdle(ctx context.Context) bool
	HandedStats() netstack.HandedStats
}

// Descriptor names in a handover: the TUN, and the health and metrics
// listeners by their flag's address; node ports name themselves
// (nodeport.Listeners.Sockets).
const handoverTUN = "tun"

func handoverHTTP(addr string) string { return "http " + addr }

// HandoverStatus is a handover in progress, as status shows it.
type HandoverStatus struct {
	// Predecessor is the kubetun this one took over from, while it drains.
	Predecessor *PeerStatus `json:"predecessor,omitempty"`
	// Successor is the kubetun this one handed over to: this one drains.
	Successor *PeerStatus `json:"successor,omitempty"`
}

// PeerStatus is the other kubetun of a handover.
type PeerStatus struct {
	PID     int    `json:"pid"`
	Version string `json:"version"`
	// TookMillis is how long the takeover took, from the successor's start
	// to its serving.
	TookMillis int64 `json:"tookMillis,omitempty"`
	// TCPFlows and UDPSessions are what the draining kubetun holds, as it
	// last said.
	TCPFlows    int `json:"tcpFlows"`
	UDPSessions int `json:"udpSessions"`
	// Packets and Bytes are what the successor passed to the draining one.
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// handoverState is a Proxy's side of handovers.
type handoverState struct {
	pred      *handover.Predecessor // the kubetun this one takes over from; nil: none
	predStart time.Time             // when this process started taking over
	predTook  time.Duration         // how long it took, once it serves

	srv     *handover.Server // where successors connect, once serving
	wg      sync.WaitGroup   // acceptSuccessors and watchPredecessor
	closing chan struct{}    // closed by stop: the goroutines end

	mu      sync.Mutex // guards the fields below
	predUp  bool       // pred serves its flows still
	succ    *handover.Successor
	retired chan struct{} // closed once a successor serves: this Proxy drains
	httpOff []func()      // stop the health and metrics servers, which the successor serves now
}

// hello is this process as the other side of a handover sees it.
func (p *Proxy) hello() handover.Hello {
	return handover.Hello{Protocol: handover.Protocol, Version: p.cfg.Version, PID: os.Getpid()}
}

// dialPredecessor connects to the kubetun serving the TUN, if one does, and
// takes its descriptors. A refusal (or another handover protocol) is an
// error naming both kubetuns: nothing was changed.
func (p *Proxy) dialPredecessor() error {
	p.ho.predStart = time.Now()
	pred, err := handover.Dial(p.cfg.StateDir, p.cfg.TUN, p.hello())
	var refused *handover.RefusedError
	switch {
	case errors.As(err, &refused):
		return fmt.Errorf("cannot take over --tun %s: %w", p.cfg.TUN, err)
	case err != nil:
		return fmt.Errorf("taking over --tun %s: %w", p.cfg.TUN, err)
	case pred == nil:
		return nil
	}
	p.ho.pred = pred
	p.ho.predUp = true
	h := pred.Hello()
	p.log.Info("taking over from the running kubetun: its descriptors received; it serves until this one is ready",
		"tun", p.cfg.TUN, "pid", h.PID, "version", h.Version, "descriptors", len(pred.Names()))
	return nil
}

// inherited returns the descriptor the predecessor passed under name, if
// any; the caller owns it.
func (p *Proxy) inherited(name string) *os.File {
	if p.ho.pred == nil {
		return nil
	}
	return p.ho.pred.Take(name)
}

// listenHTTP is env.listen for the health or metrics address, on the
// predecessor's listener if it passed one for that address.
func (p *Proxy) listenHTTP(network, addr string) (net.Listener, error) {
	if f := p.inherited(handoverHTTP(addr)); f != nil {
		defer f.Close()
		ln, err := net.FileListener(f)
		if err != nil {
			return nil, fmt.Errorf("listener passed on: %w", err)
		}
		return ln, nil
	}
	return p.env.listen(network, addr)
}

// takeOver has the predecessor stop reading the TUN and reads it: the
// first whole state is served and routed. Its flows' packets go to it from
// now on.
func (p *Proxy) takeOver() error {
	pred := p.ho.pred
	hd, ok := p.dp.(handoverDataplane)
	if !ok {
		return errors.New("taking over: this data plane cannot")
	}
	handed, err := pred.Commit()
	if err != nil {
		return err
	}
	hd.SetPredecessor(pred, handed)
	hd.Start()
	returned := func(pkt []byte) {
		// A datagram the predecessor has no session for (any more): this
		// process serves that client from now on.
		hd.ForgetHandedUDP(pkt)
		hd.Inject(pkt)
	}
	if err := pred.Serving(returned); err != nil {
		// The predecessor is gone: its flows with it. The TUN is read here.
		p.log.Warn("the predecessor went during the takeover; its flows are lost", "err", err)
	}
	p.ho.mu.Lock()
	p.ho.predTook = time.Since(p.ho.predStart)
	p.ho.mu.Unlock()
	h := pred.Hello()
	p.log.Info("took over: serving every new flow; the predecessor keeps its own until they end",
		"pid", h.PID, "version", h.Version, "took", p.ho.predTook.Round(time.Millisecond),
		"tcp-setups", len(handed.TCPSetups), "udp-sessions", len(handed.UDPSessions))
	p.ho.wg.Add(1)
	go p.watchPredecessor(hd)
	return nil
}

// watchPredecessor stops passing packets on once the predecessor has gone.
func (p *Proxy) watchPredecessor(hd handoverDataplane) {
	defer p.ho.wg.Done()
	select {
	case <-p.ho.pred.Done():
	case <-p.ho.closing:
		return
	}
	hd.ClearPredecessor()
	p.ho.mu.Lock()
	p.ho.predUp = false
	p.ho.mu.Unlock()
	st := hd.HandedStats()
	p.log.Info("the predecessor has exited; packets of flows nobody holds are refused again",
		"pid", p.ho.pred.Hello().PID, "packets-passed", st.Packets, "bytes-passed", st.Bytes, "not-passed", st.Failed)
}

// listenForSuccessors opens the handover socket, once this Proxy serves.
func (p *Proxy) listenForSuccessors() {
	if p.cfg.StateDir == "" {
		return
	}
	hd, ok := p.dp.(handoverDataplane)
	if !ok {
		return
	}
	srv, err := handover.Listen(p.cfg.StateDir, p.cfg.TUN, p.hello())
	if err != nil {
		p.log.Warn("a new kubetun cannot take over from this one without cutting connections", "err", err)
		return
	}
	p.ho.srv = srv
	p.ho.wg.Add(1)
	go p.acceptSuccessors(hd)
}

// acceptSuccessors hands over to the first successor that serves.
func (p *Proxy) acceptSuccessors(hd handoverDataplane) {
	defer p.ho.wg.Done()
	for {
		succ, err := p.ho.srv.Accept()
		if err != nil {
			return // closed
		}
		p.ho.mu.Lock()
		predUp := p.ho.predUp
		p.ho.mu.Unlock()
		if predUp {
			h := p.ho.pred.Hello()
			succ.Refuse(fmt.Sprintf("it is still taking over from pid %d, which drains its flows; try again once that has exited", h.PID))
			p.log.Warn("a new kubetun asked to take over while this one's predecessor still drains; refused",
				"new-pid", succ.Hello().PID, "predecessor-pid", h.PID)
			continue
		}
		if p.handOver(hd, succ) {
			return
		}
	}
}

// handOver goes through one successor's takeover and reports whether it
// serves now. Until it does, nothing is changed that is not undone.
func (p *Proxy) handOver(hd handoverDataplane, succ *handover.Successor) bool {
	h := succ.Hello()
	names, socks := p.handoverSockets(hd)
	if err := succ.Offer(names, socks); err != nil {
		p.log.Warn("a new kubetun could not take over: passing descriptors failed", "pid", h.PID, "err", err)
		succ.Close()
		return false
	}
	p.log.Info("a new kubetun is taking over; serving until it is ready", "pid", h.PID, "version", h.Version, "descriptors", len(names))
	p.ho.mu.Lock()
	p.ho.succ = succ
	p.ho.mu.Unlock()
	abandon := func(why string, err error) bool {
		p.log.Warn("the new kubetun did not take over ("+why+"); serving on as before", "pid", h.PID, "err", err)
		succ.Close()
		p.ho.mu.Lock()
		p.ho.succ = nil
		p.ho.mu.Unlock()
		return false
	}
	if err := succ.WaitCommit(); err != nil {
		return abandon("it failed or went away while getting ready", err)
	}
	hd.Pause()
	handed := hd.HandOver(succ)
	if err := succ.Release(handed, hd.Inject); err != nil {
		hd.TakeBack()
		hd.Start()
		return abandon("it went away", err)
	}
	select {
	case <-succ.Serving():
	case <-succ.Done():
		hd.TakeBack()
		hd.Start()
		return abandon("it went away before serving", nil)
	}
	p.retire(hd, succ)
	return true
}

// handoverSockets lists what a successor takes over: the TUN, the health
// and metrics listeners, the node port sockets.
func (p *Proxy) handoverSockets(hd handoverDataplane) ([]string, []syscall.Conn) {
	names := []string{handoverTUN}
	socks := []syscall.Conn{hd.File()}
	p.ho.mu.Lock()
	for addr, ln := range p.httpListeners {
		if sc, ok := ln.(syscall.Conn); ok {
			names = append(names, handoverHTTP(addr))
			socks = append(socks, sc)
		}
	}
	p.ho.mu.Unlock()
	if p.nodePorts != nil {
		n, s := p.nodePorts.Sockets()
		names, socks = append(names, n...), append(socks, s...)
	}
	return names, socks
}

// retire makes this Proxy a draining predecessor: the successor serves the
// TUN, the listeners and the node ports. Its source stops; Run waits for its
// last flow (drainRetired).
func (p *Proxy) retire(hd handoverDataplane, succ *handover.Successor) {
	hd.HandOff()
	if p.nodePorts != nil {
		p.nodePorts.HandOff()
	}
	p.ho.mu.Lock()
	off := p.ho.httpOff
	p.ho.httpOff = nil
	close(p.ho.retired)
	p.ho.mu.Unlock()
	for _, f := range off {
		f()
	}
	st := p.dp.Stats()
	p.log.Info("handed over: the new kubetun serves every new flow; this one keeps its own until they end",
		"pid", succ.Hello().PID, "tcp-flows", st.TCPActive, "udp-sessions", st.UDPActive)
	if p.stopSource != nil {
		p.stopSource()
	}
}

// isRetired reports whether a successor serves now.
func (p *Proxy) isRetired() bool {
	select {
	case <-p.ho.retired:
		return true
	default:
		return false
	}
}

// statsEvery is how often a draining predecessor reports its flows left.
const statsEvery = time.Second

// drainRetired waits, once handed over, until the last flow has ended, the
// successor has gone (no more packets reach the flows), or ctx is done
// (SIGTERM), which leaves Config.DrainTimeout for the flows. What is left
// is reset as the Proxy stops.
func (p *Proxy) drainRetired(ctx context.Context) {
	hd := p.dp.(handoverDataplane)
	p.ho.mu.Lock()
	succ := p.ho.succ
	p.ho.mu.Unlock()
	idleCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	idle := make(chan bool, 1)
	go func() { idle <- hd.WaitIdle(idleCtx) }()
	report := time.NewTicker(statsEvery)
	defer report.Stop()
	send := func() {
		st := p.dp.Stats()
		succ.SendStats(handover.Stats{TCPFlows: st.TCPActive + st.TCPSetups, UDPSessions: st.UDPActive})
	}
	send()
	var deadline <-chan time.Time
	for {
		select {
		case <-idle:
			p.log.Info("drained: the last flow has ended; exiting")
			return
		case <-succ.Done():
			st := p.dp.Stats()
			p.log.Warn("the new kubetun has gone: no packet reaches this one's flows any more; resetting them",
				"tcp-flows", st.TCPActive, "udp-sessions", st.UDPActive)
			return
		case <-ctx.Done():
			ctx = context.Background() // once
			st := p.dp.Stats()
			p.log.Info("draining: the open flows may finish", "timeout", p.cfg.DrainTimeout,
				"tcp-flows", st.TCPActive, "udp-sessions", st.UDPActive)
			deadline = time.After(p.cfg.DrainTimeout)
		case <-deadline:
			st := p.dp.Stats()
			p.log.Warn("drain timeout: resetting the flows still open", "timeout", p.cfg.DrainTimeout,
				"tcp-flows", st.TCPActive, "udp-sessions", st.UDPActive)
			return
		case <-report.C:
			send()
		}
	}
}

// closeHandover ends what handing over started; the predecessor, if it
// still drains, goes on by itself.
func (p *Proxy) closeHandover() {
	close(p.ho.closing)
	if p.ho.srv != nil {
		p.ho.srv.Close()
	}
	p.ho.mu.Lock()
	succ := p.ho.succ
	p.ho.mu.Unlock()
	if succ != nil {
		succ.Close()
	}
	if p.ho.pred != nil {
		p.ho.pred.Close()
	}
	p.ho.wg.Wait()
}

// handoverStatus is status's view of a handover, nil when there is none.
func (p *Proxy) handoverStatus() *HandoverStatus {
	p.ho.mu.Lock()
	defer p.ho.mu.Unlock()
	var st HandoverStatus
	if p.ho.pred != nil && p.ho.predUp {
		h, s := p.ho.pred.Hello(), p.ho.pred.Stats()
		ps := &PeerStatus{PID: h.PID, Version: h.Version, TookMillis: p.ho.predTook.Milliseconds(),
			TCPFlows: s.TCPFlows, UDPSessions: s.UDPSessions}
		if hd, ok := p.dp.(handoverDataplane); ok {
			hs := hd.HandedStats()
			ps.Packets, ps.Bytes = hs.Packets, hs.Bytes
		}
		st.Predecessor = ps
	}
	if p.ho.succ != nil {
		select {
		case <-p.ho.retired:
			h := p.ho.succ.Hello()
			st.Successor = &PeerStatus{PID: h.PID, Version: h.Version}
		default:
		}
	}
	if st.Predecessor == nil && st.Successor == nil {
		return nil
	}
	return &st
}

// waitHandover, on SIGTERM, lets a successor that is getting ready finish
// its takeover, within Config.DrainTimeout: a rolling update stops the old
// kubetun as soon as the new one is ready, which may be a moment before it
// said so here.
func (p *Proxy) waitHandover() {
	p.ho.mu.Lock()
	succ := p.ho.succ
	p.ho.mu.Unlock()
	if succ == nil || p.isRetired() {
		return
	}
	p.log.Info("stopping, but a new kubetun is taking over: waiting for it", "pid", succ.Hello().PID, "timeout", p.cfg.DrainTimeout)
	select {
	case <-p.ho.retired:
	case <-succ.Done():
	case <-time.After(p.cfg.DrainTimeout):
	}
}
