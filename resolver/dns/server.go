package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	miekg "github.com/miekg/dns"

	"github.com/kubetun/kubetun/resolver"
)

// Knobs.
const (
	// DefaultDomain is the cluster domain when Config.Domain is empty.
	DefaultDomain = "cluster.local"

	// DefaultTimeout bounds the exchange with one upstream server (the
	// UDP query and, if its answer is truncated, the TCP retry).
	DefaultTimeout = 2 * time.Second

	// udpReadSize is the buffer a query is read into. Queries are small;
	// 4096 leaves room for any EDNS0 options a client adds.
	udpReadSize = miekg.DefaultMsgSize

	// ednsSize is the UDP payload size this server advertises in its
	// answers: the DNS Flag Day 2020 value, which avoids IP fragmentation
	// on any path.
	ednsSize = 1232

	// maxForwards bounds the questions being forwarded at once. Each holds
	// a goroutine and a socket for up to Timeout per upstream; beyond the
	// bound a question gets SERVFAIL at once rather than piling up while
	// upstream is slow.
	maxForwards = 1024
)

// Snapshots gives the current service table. *resolver.Table is one.
type Snapshots interface {
	Load() *resolver.Snapshot
}

var _ Snapshots = (*resolver.Table)(nil)

// Config is what New needs.
type Config struct {
	// Table is where names are looked up, at every query.
	Table Snapshots
	// Domain is the cluster domain; empty means DefaultDomain.
	Domain string
	// Aliases are more domains answered as Domain is (Zone.Aliases).
	Aliases []string
	// ServiceCIDRs are the service ranges, for reverse lookups (see
	// Zone.ServiceCIDRs); SetServiceCIDRs replaces them.
	ServiceCIDRs []netip.Prefix
	// Self is the address clients reach this server on (the DNS address
	// inside the service range). An upstream on it is dropped: forwarding
	// to it would loop.
	Self netip.Addr
	// Upstreams are the servers names outside the zone are forwarded to,
	// tried in order: "ip:port", or "ip" for port 53. None means such
	// names get SERVFAIL.
	Upstreams []string
	// Timeout bounds the exchange with each upstream; zero means
	// DefaultTimeout.
	Timeout time.Duration
	Logger  *slog.Logger
	// Map, if set, translates addresses in answers (Zone.Map).
	Map Translator
}

// Server answers cluster names from the service table and forwards the
// rest.
type Server struct {
	table     Snapshots
	domain    string   // canonical, "cluster.local."
	aliases   []string // canonical
	self      netip.Addr
	upstreams []string // "ip:port", Self excluded
	timeout   time.Duration
	log       *slog.Logger
	addrMap   Translator // nil: none

	cidrs     atomic.Pointer[[]netip.Prefix] // the service ranges; replaced whole
	endpoints endpointCache                  // the endpoint index for PTR records
	forwards  chan struct{}                  // a slot per question being forwarded
	serving   atomic.Bool                    // Serve is running
}

// New checks cfg and returns a Server; Serve starts it.
func New(cfg Config) (*Server, error) {
	if cfg.Table == nil {
		return nil, errors.New("dns.New: Table is required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	domain := cfg.Domain
	if domain == "" {
		domain = DefaultDomain
	}
	domain = miekg.CanonicalName(domain)
	if _, ok := miekg.IsDomainName(domain); !ok || domain == "." {
		return nil, fmt.Errorf("dns.New: cluster domain %q is not a domain name", cfg.Domain)
	}
	if _, _, ok := parseReverse("1.0.0.127." + domain); ok || domain == reverseV4 || domain == reverseV6 {
		return nil, fmt.Errorf("dns.New: cluster domain %q is a reverse zone", cfg.Domain)
	}
	var aliases []string
	for _, a := range cfg.Aliases {
		c := miekg.CanonicalName(a)
		if _, ok := miekg.IsDomainName(c); !ok || c == "." {
			return nil, fmt.Errorf("dns.New: alias domain %q is not a domain name", a)
		}
		if _, _, ok := parseReverse("1.0.0.127." + c); ok || c == reverseV4 || c == reverseV6 {
			return nil, fmt.Errorf("dns.New: alias domain %q is a reverse zone", a)
		}
		if c != domain {
			aliases = append(aliases, c)
		}
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	self := cfg.Self.Unmap()

	var upstreams []string
	for _, u := range cfg.Upstreams {
		ap, err := parseUpstream(u)
		if err != nil {
			return nil, fmt.Errorf("dns.New: upstream %q: %w", u, err)
		}
		if self.IsValid() && ap.Addr().Unmap() == self {
			log.Warn("dns: dropping upstream: it is this server, forwarding to it would loop", "upstream", u)
			continue
		}
		upstreams = append(upstreams, ap.String())
	}
	if len(upstreams) == 0 {
		log.Warn("dns: no upstream servers: names outside the cluster domain get SERVFAIL", "domain", domain)
	}

	s := &Server{
		table:     cfg.Table,
		domain:    domain,
		aliases:   aliases,
		self:      self,
		upstreams: upstreams,
		timeout:   timeout,
		log:       log,
		addrMap:   cfg.Map,
		forwards:  make(chan struct{}, maxForwards),
	}
	s.SetServiceCIDRs(cfg.ServiceCIDRs)
	return s, nil
}

// SetServiceCIDRs replaces the service ranges (ServiceCIDR objects come and
// go while kubetun runs). Safe to call at any time.
func (s *Server) SetServiceCIDRs(cidrs []netip.Prefix) {
	c := make([]netip.Prefix, len(cidrs))
	for i, p := range cidrs {
		c[i] = p.Masked()
	}
	s.cidrs.Store(&c)
}

// Zone returns what the server currently answers for.
func (s *Server) Zone() Zone {
	return Zone{Domain: s.domain, Aliases: s.aliases, ServiceCIDRs: *s.cidrs.Load(), NameServer: s.self, Map: s.addrMap, endpoints: &s.endpoints}
}

// socket is one of the sockets Serve answers on, and its server.
type socket struct {
	name string
	srv  *miekg.Server
}

// sockets returns a server for each of pc and ln that is not nil, whose
// handlers see ctx.
func (s *Server) sockets(ctx context.Context, pc net.PacketConn, ln net.Listener) []socket {
	var sockets []socket
	if pc != nil {
		sockets = append(sockets, socket{"udp " + pc.LocalAddr().String(), &miekg.Server{
			PacketConn: pc,
			Handler:    &handler{s: s, ctx: ctx},
			UDPSize:    udpReadSize,
		}})
	}
	if ln != nil {
		sockets = append(sockets, socket{"tcp " + ln.Addr().String(), &miekg.Server{
			Listener: ln,
			Handler:  &handler{s: s, ctx: ctx, tcp: true},
		}})
	}
	return sockets
}

// Serve answers queries on pc (UDP) and ln (TCP) until ctx is done; either
// may be nil, not both. It takes ownership of both and closes them. It
// returns once every goroutine it started has ended: nil after ctx ends,
// or the error that stopped a socket (which stops the other too).
func (s *Server) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	if pc == nil && ln == nil {
		return errors.New("dns: Serve: no PacketConn and no Listener")
	}
	if !s.serving.CompareAndSwap(false, true) {
		if pc != nil {
			pc.Close()
		}
		if ln != nil {
			ln.Close()
		}
		return errors.New("dns: Serve: already serving")
	}
	defer s.serving.Store(false)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	sockets := s.sockets(ctx, pc, ln)
	errs := make([]error, len(sockets))
	var wg sync.WaitGroup
	for i, sock := range sockets {
		started := make(chan struct{})
		stopped := make(chan struct{})
		sock.srv.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() {
			defer close(stopped)
			if err := sock.srv.ActivateAndServe(); err != nil {
				errs[i] = fmt.Errorf("dns: serving %s: %w", sock.name, err)
			}
			cancel() // one socket down stops the other
		})
		wg.Go(func() {
			// miekg refuses to shut down a server that has not started.
			select {
			case <-started:
			case <-stopped:
				return
			}
			select {
			case <-ctx.Done():
				// Returns once the server's handlers have returned;
				// they see ctx and abandon their forwards.
				sock.srv.Shutdown()
			case <-stopped:
			}
		})
		s.log.Debug("dns: serving", "on", sock.name, "domain", s.domain)
	}
	wg.Wait()
	return errors.Join(errs...)
}

// handler is a miekg.Handler for one socket.
type handler struct {
	s   *Server
	ctx context.Context // Serve's; ends forwards on shutdown
	tcp bool
}

func (h *handler) ServeDNS(w miekg.ResponseWriter, req *miekg.Msg) {
	resp := h.s.respond(h.ctx, req, h.tcp)
	if err := w.WriteMsg(resp); err != nil {
		h.s.log.Debug("dns: writing answer", "to", w.RemoteAddr(), "err", err)
	}
}

// respond returns the answer to req (which miekg checked has one
// question), sized for the transport: for UDP, the client's EDNS0 size
// (512 without EDNS0), truncated with TC set so the client retries over
// TCP.
func (s *Server) respond(ctx context.Context, req *miekg.Msg, tcp bool) *miekg.Msg {
	opt := req.IsEdns0()
	size := miekg.MinMsgSize
	switch {
	case tcp:
		size = miekg.MaxMsgSize
	case opt != nil:
		size = max(int(opt.UDPSize()), miekg.MinMsgSize)
	}

	var resp *miekg.Msg
	switch {
	case req.Opcode != miekg.OpcodeQuery:
		resp = s.reply(req, Result{Rcode: miekg.RcodeNotImplemented})
	case opt != nil && opt.Version() != 0:
		// RFC 6891 6.1.3: only EDNS version 0 exists.
		resp = s.reply(req, Result{Rcode: miekg.RcodeBadVers})
	default:
		q := req.Question[0]
		res := s.Zone().Answer(s.table.Load(), q.Name, q.Qtype)
		switch {
		case res.Forward:
			resp = s.forward(ctx, req, tcp)
		case q.Qclass != miekg.ClassINET && q.Qclass != miekg.ClassANY:
			resp = s.reply(req, Result{Rcode: miekg.RcodeRefused})
		case res.Chase != "":
			resp = s.reply(req, s.chase(ctx, req, res, tcp))
		default:
			resp = s.reply(req, res)
		}
	}
	truncate(resp, size)
	return resp
}

// reply is this server's own answer to req.
func (s *Server) reply(req *miekg.Msg, res Result) *miekg.Msg {
	resp := new(miekg.Msg)
	resp.SetRcode(req, res.Rcode)
	resp.Authoritative = res.Authoritative
	resp.RecursionAvailable = len(s.upstreams) > 0
	resp.Answer, resp.Ns, resp.Extra = res.Answer, res.Ns, res.Extra
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(ednsSize, opt.Do())
	}
	return resp
}

// truncate fits m into size bytes, setting TC when records had to go.
// Unlike miekg's Truncate alone, it keeps TC clear when only additional
// records went (RFC 2181 9): the client has what it asked for.
func truncate(m *miekg.Msg, size int) {
	tc, answers, authority := m.Truncated, len(m.Answer), len(m.Ns)
	m.Truncate(size)
	if !tc && len(m.Answer) == answers && len(m.Ns) == authority {
		m.Truncated = false
	}
}
