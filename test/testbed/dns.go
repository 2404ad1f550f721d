package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	miekg "github.com/miekg/dns"
)

// DNSServer is a small authoritative DNS server that the test process runs
// inside a namespace of the test bed, over UDP and TCP: the upstream that
// kubetun forwards names outside the cluster domain to. It answers the
// records it was given and NXDOMAIN for every other name. Its sockets
// belong to the host's namespace (they are made there, see InNamespace), so
// it is reached exactly like a pod; its goroutines are the test process's.
type DNSServer struct {
	// Addr is where it listens, UDP and TCP.
	Addr netip.AddrPort

	records map[string][]miekg.RR // by canonical owner name
	queries atomic.Int64
	silent  atomic.Bool // SetSilent
	udp     *miekg.Server
	tcp     *miekg.Server
	done    sync.WaitGroup // the two Serve goroutines
	closing sync.Once
	err     error // from Close
}

// StartDNSServer starts a DNSServer on h's IPv4 address, port 53, inside h's
// namespace. records are in zone-file syntax, e.g.
// "upstream.test. 60 IN A 192.0.2.7". The test closes the server (Close);
// Testbed.Close does not know it.
func (tb *Testbed) StartDNSServer(h *Host, records ...string) (*DNSServer, error) {
	return tb.StartDNSServerOn(h, netip.AddrPortFrom(h.IP, 53), records...)
}

// StartDNSServerOn is StartDNSServer on addr, one of h's addresses (its
// IPv6 one, say).
func (tb *Testbed) StartDNSServerOn(h *Host, addr netip.AddrPort, records ...string) (*DNSServer, error) {
	s := &DNSServer{Addr: addr, records: make(map[string][]miekg.RR)}
	for _, r := range records {
		rr, err := miekg.NewRR(r)
		if err != nil || rr == nil {
			return nil, fmt.Errorf("testbed: DNS record %q: %v", r, err)
		}
		owner := miekg.CanonicalName(rr.Header().Name)
		s.records[owner] = append(s.records[owner], rr)
	}
	var (
		pc net.PacketConn
		ln net.Listener
	)
	err := InNamespace(h.Namespace, func() error {
		var err error
		if pc, err = net.ListenPacket("udp", addr.String()); err != nil {
			return err
		}
		if ln, err = net.Listen("tcp", addr.String()); err != nil {
			pc.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("testbed: DNS server on %s in %s: %w", addr, h.Namespace, err)
	}
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	h2 := miekg.HandlerFunc(s.serveDNS)
	s.udp = &miekg.Server{PacketConn: pc, Handler: h2, NotifyStartedFunc: notify}
	s.tcp = &miekg.Server{Listener: ln, Handler: h2, NotifyStartedFunc: notify}
	for _, srv := range []*miekg.Server{s.udp, s.tcp} {
		s.done.Add(1)
		go func() {
			defer s.done.Done()
			srv.ActivateAndServe()
		}()
	}
	for range 2 {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			s.Close()
			return nil, fmt.Errorf("testbed: DNS server on %s in %s: not serving after 5s", addr, h.Namespace)
		}
	}
	tb.logf("testbed %s: DNS server on %s (UDP, TCP) in %s with %d records", tb.Prefix, addr, h.Namespace, len(records))
	return s, nil
}

// Queries returns how many questions the server has been asked.
func (s *DNSServer) Queries() int64 { return s.queries.Load() }

// SetSilent makes the server read questions and answer none (true), as an
// overloaded or firewalled server does, or answer again (false).
func (s *DNSServer) SetSilent(silent bool) { s.silent.Store(silent) }

// Close stops the server and waits for it; its port then refuses (ICMP
// port unreachable for UDP, RST for TCP). Safe to call more than once.
func (s *DNSServer) Close() error {
	s.closing.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var errs []error
		for _, srv := range []*miekg.Server{s.udp, s.tcp} {
			if err := srv.ShutdownContext(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		s.done.Wait()
		if err := errors.Join(errs...); err != nil {
			s.err = fmt.Errorf("testbed: DNS server on %s: shutdown: %w", s.Addr, err)
		}
	})
	return s.err
}

// serveDNS answers from the records: NOERROR with the records of the type
// asked (none: NODATA), NXDOMAIN for a name it has no record of.
func (s *DNSServer) serveDNS(w miekg.ResponseWriter, req *miekg.Msg) {
	s.queries.Add(1)
	if s.silent.Load() {
		return
	}
	m := new(miekg.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) == 1 {
		q := req.Question[0]
		rrs, ok := s.records[miekg.CanonicalName(q.Name)]
		if !ok {
			m.Rcode = miekg.RcodeNameError
		}
		for _, rr := range rrs {
			if q.Qtype == miekg.TypeANY || rr.Header().Rrtype == q.Qtype {
				m.Answer = append(m.Answer, rr)
			}
		}
	} else {
		m.Rcode = miekg.RcodeFormatError
	}
	w.WriteMsg(m)
}

// WriteResolvConf writes /etc/netns/<h's namespace>/resolv.conf, which `ip
// netns exec` (and so Run and Start) bind-mounts over /etc/resolv.conf for
// every command it runs in h's namespace: a pod's resolv.conf as kubelet
// writes it. The returned func removes the file and the directory, and
// /etc/netns too if this call created it and it is empty; the test calls it
// (Testbed.Close does not know the file).
func (tb *Testbed) WriteResolvConf(h *Host, content string) (remove func() error, err error) {
	const root = "/etc/netns"
	_, statErr := os.Stat(root)
	createdRoot := errors.Is(statErr, os.ErrNotExist)
	dir := filepath.Join(root, h.Namespace)
	remove = func() error {
		err := os.RemoveAll(dir)
		if createdRoot {
			os.Remove(root) // fails, harmlessly, if someone else's directory is in it
		}
		if err != nil {
			return fmt.Errorf("testbed: remove %s: %w", dir, err)
		}
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		remove()
		return nil, fmt.Errorf("testbed: resolv.conf for %s: %w", h.Name, err)
	}
	if err := WriteFileAtomic(filepath.Join(dir, "resolv.conf"), []byte(content)); err != nil {
		remove()
		return nil, err
	}
	tb.logf("testbed %s: %s/resolv.conf for %s:\n%s", tb.Prefix, dir, h.Name, content)
	return remove, nil
}
