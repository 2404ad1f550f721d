package dns

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	miekg "github.com/miekg/dns"
)

// forward asks the upstream servers, in order, and returns the first good
// answer with req's ID; SERVFAIL when none answers.
//
// A client that asked over TCP is forwarded over TCP (it came there
// because a UDP answer was truncated); one that asked over UDP over UDP,
// retried over TCP with the same upstream when the answer is truncated.
// An upstream that answers SERVFAIL or REFUSED is passed over like one
// that does not answer, as a stub resolver would, but its answer is
// relayed if no other does better.
func (s *Server) forward(ctx context.Context, req *miekg.Msg, tcp bool) *miekg.Msg {
	if len(s.upstreams) == 0 {
		return s.reply(req, Result{Rcode: miekg.RcodeServerFailure})
	}
	select {
	case s.forwards <- struct{}{}:
		defer func() { <-s.forwards }()
	default:
		s.log.Debug("dns: too many questions being forwarded; SERVFAIL", "name", req.Question[0].Name)
		return s.reply(req, Result{Rcode: miekg.RcodeServerFailure})
	}

	var fallback *miekg.Msg
	for _, up := range s.upstreams {
		resp, err := s.ask(ctx, req, up, tcp)
		if err != nil {
			s.log.Debug("dns: upstream did not answer", "upstream", up, "name", req.Question[0].Name, "err", err)
			if ctx.Err() != nil {
				break // shutting down
			}
			continue
		}
		if resp.Rcode == miekg.RcodeServerFailure || resp.Rcode == miekg.RcodeRefused {
			if fallback == nil {
				fallback = resp
			}
			continue
		}
		return resp
	}
	if fallback != nil {
		return fallback
	}
	return s.reply(req, Result{Rcode: miekg.RcodeServerFailure})
}

// chase completes res, an answer whose CNAME chain leaves the zone at
// res.Chase (an ExternalName Service's outside target): it asks upstream
// for res.Chase with the question's type and appends upstream's records on
// the chain, and the rcode of the chain's end (RFC 6604), as CoreDNS does.
// When upstream does not answer, or fails, res goes back as it is, the
// CNAME alone: a client that follows CNAMEs itself may still get on.
func (s *Server) chase(ctx context.Context, req *miekg.Msg, res Result, tcp bool) Result {
	q := req.Question[0]
	m := new(miekg.Msg)
	m.SetQuestion(res.Chase, q.Qtype)
	m.RecursionDesired = true
	do := false
	if opt := req.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	m.SetEdns0(miekg.DefaultMsgSize, do)
	up := s.forward(ctx, m, tcp)
	if up.Rcode != miekg.RcodeSuccess && up.Rcode != miekg.RcodeNameError {
		s.log.Debug("dns: upstream did not complete a CNAME chain", "name", q.Name, "target", res.Chase,
			"rcode", miekg.RcodeToString[up.Rcode])
		return res
	}
	cnames := 0
	for _, rr := range res.Answer {
		if rr.Header().Rrtype == miekg.TypeCNAME {
			cnames++
		}
	}
	res.Rcode = up.Rcode
	res.Answer = append(res.Answer, chainRecords(res.Chase, up.Answer, maxCNAMEs-cnames)...)
	// A negative end (NXDOMAIN, NODATA) carries its zone's SOA, which
	// says how long to cache it.
	for _, rr := range up.Ns {
		if rr.Header().Rrtype == miekg.TypeSOA {
			res.Ns = append(res.Ns, rr)
		}
	}
	res.Chase = ""
	return res
}

// chainRecords returns the records of rrs on the CNAME chain from name:
// those owned by name or by a CNAME target reached from it, following at
// most limit more CNAMEs. Whatever else an upstream adds is not relayed.
func chainRecords(name string, rrs []miekg.RR, limit int) []miekg.RR {
	owners := map[string]bool{miekg.CanonicalName(name): true}
	taken := make([]bool, len(rrs))
	var out []miekg.RR
	for more := true; more; {
		more = false
		for i, rr := range rrs {
			if taken[i] || !owners[miekg.CanonicalName(rr.Header().Name)] {
				continue
			}
			c, isCNAME := rr.(*miekg.CNAME)
			if isCNAME && limit <= 0 {
				continue
			}
			taken[i], more = true, true
			out = append(out, rr)
			if isCNAME {
				limit--
				owners[miekg.CanonicalName(c.Target)] = true
			}
		}
	}
	return out
}

// ask exchanges req with one upstream within the timeout and returns its
// answer with req's ID.
func (s *Server) ask(ctx context.Context, req *miekg.Msg, upstream string, tcp bool) (*miekg.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()

	// A fresh ID towards upstream: the client's is the client's choice,
	// and a predictable one would make spoofed upstream answers easy.
	m := req.Copy()
	m.Id = miekg.Id()

	network := "udp"
	if tcp {
		network = "tcp"
	}
	resp, err := s.exchange(ctx, m, network, upstream)
	if err == nil && resp.Truncated && network == "udp" {
		full, err := s.exchange(ctx, m, "tcp", upstream)
		if err == nil {
			resp = full
		} else {
			// Relay the truncated answer; the client may retry over TCP.
			s.log.Debug("dns: TCP retry after a truncated answer failed", "upstream", upstream, "err", err)
		}
	}
	if err != nil {
		return nil, err
	}
	resp.Id = req.Id
	return resp, nil
}

// exchange sends m to addr over network and reads the answer, until ctx
// ends.
func (s *Server) exchange(ctx context.Context, m *miekg.Msg, network, addr string) (*miekg.Msg, error) {
	c := &miekg.Client{
		Net:     network,
		Timeout: s.timeout,
		// The read buffer when the question has no EDNS0 size: room for
		// an upstream that sends more than 512 bytes anyway.
		UDPSize: miekg.DefaultMsgSize,
	}
	conn, err := c.DialContext(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// miekg's exchange heeds ctx's deadline but not its cancellation;
	// closing the connection ends it at once on shutdown.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	resp, _, err := c.ExchangeWithConnContext(ctx, m, conn)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return resp, err
}

// parseUpstream parses "ip:port", or "ip" for port 53.
func parseUpstream(s string) (netip.AddrPort, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(ip, 53), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, errors.New(`want "ip:port" or "ip"`)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, errors.New("port 0")
	}
	return ap, nil
}

// UpstreamsFromResolvConf returns the nameservers of a resolv.conf file as
// "ip:53", in order: the default upstreams. Lines that are not nameserver
// lines, and nameservers that are not addresses, are skipped, as the C
// library does.
//
// On a systemd-resolved host /etc/resolv.conf names only its stub,
// 127.0.0.53; /run/systemd/resolve/resolv.conf has the real servers (the
// file kubelet's --resolv-conf is pointed at there).
func UpstreamsFromResolvConf(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("UpstreamsFromResolvConf: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		ip, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, 53).String())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("UpstreamsFromResolvConf: reading %s: %w", path, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("UpstreamsFromResolvConf: %s has no nameserver line", path)
	}
	return out, nil
}
