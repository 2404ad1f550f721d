package dns_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	miekg "github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/kubetun/kubetun/resolver"
	"github.com/kubetun/kubetun/resolver/dns"
)

// wait bounds every wait in these tests.
const wait = 5 * time.Second

// bigEndpoints is how many endpoints the Service "big" has: its A answer
// (16 bytes a record) needs more than 512 and 1232 bytes, less than 4096.
const bigEndpoints = 100

// serverTable is the table the server tests serve: the answer tests'
// cluster, plus a headless Service with many endpoints.
func serverTable(tb testing.TB) *resolver.Table {
	eps := make([]discoveryv1.Endpoint, bigEndpoints)
	for i := range eps {
		eps[i] = endpoint(fmt.Sprintf("10.0.%d.%d", 100+i/200, 1+i%200), "", nil)
	}
	snap := build(tb,
		[]*corev1.Service{
			clusterIPService("default", "web", []string{"10.3.240.20"}, servicePort("http", corev1.ProtocolTCP, 80, 8080)),
			headlessService("default", "big", servicePort("http", corev1.ProtocolTCP, 80, 8080)),
		},
		[]*discoveryv1.EndpointSlice{endpointSlice("default", "big-1", "big", discoveryv1.AddressTypeIPv4,
			[]discoveryv1.EndpointPort{slicePort("http", corev1.ProtocolTCP, 8080)}, eps...)})
	var t resolver.Table
	t.Store(snap)
	return &t
}

// checkGoroutines fails the test if goroutines started during it are
// still running when it ends (checked after every later cleanup).
func checkGoroutines(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(wait)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("%d goroutines after the test, %d before:\n%s",
					runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// serve starts a server for cfg on loopback and returns its UDP and TCP
// addresses. The test's cleanup stops it and checks Serve returned nil
// in time.
func serve(t *testing.T, cfg dns.Config) (udpAddr, tcpAddr string) {
	t.Helper()
	pc, ln := listen(t)
	srv, err := dns.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	stop := start(t, srv, pc, ln)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return pc.LocalAddr().String(), ln.Addr().String()
}

func listen(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("ListenPacket: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		pc.Close()
		t.Fatalf("Listen: %v", err)
	}
	return pc, ln
}

// start runs srv.Serve; stop cancels it and returns what Serve returned.
func start(t *testing.T, srv *dns.Server, pc net.PacketConn, ln net.Listener) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, pc, ln) }()
	return func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(wait):
			t.Fatalf("Serve did not return %v after its context ended", wait)
			return nil
		}
	}
}

// ask sends a question for name over network ("udp" or "tcp") with EDNS0
// size edns (0 for no EDNS0).
func ask(t *testing.T, network, addr, name string, qtype uint16, edns uint16) *miekg.Msg {
	t.Helper()
	m := new(miekg.Msg).SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	return exchange(t, network, addr, m)
}

func exchange(t *testing.T, network, addr string, m *miekg.Msg) *miekg.Msg {
	t.Helper()
	c := &miekg.Client{Net: network, Timeout: wait, UDPSize: miekg.MaxMsgSize}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("Exchange(%s %s %s): %v", network, m.Question[0].Name, miekg.TypeToString[m.Question[0].Qtype], err)
	}
	if r.Id != m.Id {
		t.Errorf("answer ID %d, want the question's %d", r.Id, m.Id)
	}
	return r
}

// wireLen is m's size as sent, compressed.
func wireLen(m *miekg.Msg) int {
	m = m.Copy()
	m.Compress = true
	return m.Len()
}

// upstream is a fake upstream DNS server on loopback UDP and TCP.
type upstream struct {
	addr string

	mu      sync.Mutex // guards the fields below
	queries []string   // "udp example.com. A", in arrival order
	ids     []uint16
}

// startUpstream starts an upstream answering with answer, which gets the
// question and the network ("udp" or "tcp") it came over.
func startUpstream(t *testing.T, answer func(req *miekg.Msg, network string) *miekg.Msg) *upstream {
	t.Helper()
	pc, ln := listenPair(t)
	u := &upstream{addr: pc.LocalAddr().String()}
	handler := miekg.HandlerFunc(func(w miekg.ResponseWriter, req *miekg.Msg) {
		network := w.LocalAddr().Network()
		q := req.Question[0]
		u.mu.Lock()
		u.queries = append(u.queries, network+" "+q.Name+" "+miekg.TypeToString[q.Qtype])
		u.ids = append(u.ids, req.Id)
		u.mu.Unlock()
		if resp := answer(req, network); resp != nil {
			w.WriteMsg(resp)
		}
	})
	servers := []*miekg.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		for _, srv := range servers {
			srv.Shutdown()
		}
		wg.Wait()
	})
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() { srv.ActivateAndServe() })
		select {
		case <-started:
		case <-time.After(wait):
			t.Fatalf("upstream did not start")
		}
	}
	return u
}

// listenPair listens on UDP and TCP on one loopback port, so one
// "ip:port" names both.
func listenPair(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("ListenPacket: %v", err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		pc.Close() // the TCP port is taken: try another
	}
	t.Fatal("no loopback port free for both UDP and TCP")
	return nil, nil
}

func (u *upstream) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.queries)
}

// exampleAnswers answers example.com with one address and big.example.com
// with bigEndpoints of them — over UDP, only as a truncated answer with no
// records, as a server whose answer does not fit does.
func exampleAnswers(req *miekg.Msg, network string) *miekg.Msg {
	resp := new(miekg.Msg).SetReply(req)
	q := req.Question[0]
	switch {
	case q.Name == "example.com." && q.Qtype == miekg.TypeA:
		resp.Answer = append(resp.Answer, mustRR("example.com. 300 IN A 192.0.2.1"))
	case q.Name == "big.example.com." && network == "udp":
		resp.Truncated = true
	case q.Name == "big.example.com.":
		for i := range bigEndpoints {
			resp.Answer = append(resp.Answer, mustRR(fmt.Sprintf("big.example.com. 300 IN A 192.0.2.%d", i+1)))
		}
	default:
		resp.Rcode = miekg.RcodeNameError
	}
	return resp
}

func mustRR(s string) miekg.RR {
	rr, err := miekg.NewRR(s)
	if err != nil {
		panic(err)
	}
	return rr
}

// closedPort returns a loopback UDP/TCP address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("ListenPacket: %v", err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// silentUpstream returns the address of a UDP socket that reads questions
// and never answers, and a channel that receives each question's arrival.
func silentUpstream(t *testing.T) (string, <-chan struct{}) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("ListenPacket: %v", err)
	}
	arrived := make(chan struct{}, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			select {
			case arrived <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().String(), arrived
}

func TestServeClusterNames(t *testing.T) {
	checkGoroutines(t)
	udp, tcp := serve(t, dns.Config{Table: serverTable(t)})
	for _, tt := range []struct{ network, addr string }{{"udp", udp}, {"tcp", tcp}} {
		t.Run(tt.network, func(t *testing.T) {
			r := ask(t, tt.network, tt.addr, "web.default.svc.cluster.local.", miekg.TypeA, 0)
			if r.Rcode != miekg.RcodeSuccess || !r.Authoritative || r.Truncated {
				t.Errorf("web: rcode %s, aa %v, tc %v; want NOERROR, aa, no tc", miekg.RcodeToString[r.Rcode], r.Authoritative, r.Truncated)
			}
			if got, want := rrStrings(r.Answer), []string{"web.default.svc.cluster.local. A 10.3.240.20"}; !slices.Equal(got, want) {
				t.Errorf("web: answer %q, want %q", got, want)
			}
			r = ask(t, tt.network, tt.addr, "nosuch.default.svc.cluster.local.", miekg.TypeA, 1232)
			if r.Rcode != miekg.RcodeNameError || !r.Authoritative || len(r.Ns) != 1 {
				t.Errorf("nosuch: rcode %s, aa %v, authority %v; want NXDOMAIN, aa, the SOA", miekg.RcodeToString[r.Rcode], r.Authoritative, r.Ns)
			}
			if opt := r.IsEdns0(); opt == nil || opt.Version() != 0 {
				t.Errorf("nosuch: OPT %v, want an EDNS0 answer to an EDNS0 question", opt)
			}
		})
	}
}

// TestServeTruncation: a UDP answer fits the client's EDNS0 size (512
// without EDNS0), with TC set when records were left out; over TCP
// everything comes.
func TestServeTruncation(t *testing.T) {
	checkGoroutines(t)
	udp, tcp := serve(t, dns.Config{Table: serverTable(t)})
	tests := []struct {
		network string
		edns    uint16
		tc      bool
	}{
		{"udp", 0, true},
		{"udp", 1232, true},
		{"udp", 4096, false},
		{"tcp", 0, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s edns %d", tt.network, tt.edns), func(t *testing.T) {
			addr := map[string]string{"udp": udp, "tcp": tcp}[tt.network]
			r := ask(t, tt.network, addr, "big.default.svc.cluster.local.", miekg.TypeA, tt.edns)
			if r.Truncated != tt.tc {
				t.Errorf("TC = %v, want %v", r.Truncated, tt.tc)
			}
			if tt.tc && (len(r.Answer) == 0 || len(r.Answer) >= bigEndpoints) {
				t.Errorf("truncated answer has %d records, want some of %d", len(r.Answer), bigEndpoints)
			}
			if !tt.tc && len(r.Answer) != bigEndpoints {
				t.Errorf("answer has %d records, want %d", len(r.Answer), bigEndpoints)
			}
			if size := max(int(tt.edns), miekg.MinMsgSize); tt.network == "udp" && wireLen(r) > size {
				t.Errorf("answer is %d bytes, want at most %d", wireLen(r), size)
			}
		})
	}
}

func TestServeForward(t *testing.T) {
	checkGoroutines(t)
	up := startUpstream(t, exampleAnswers)
	udp, tcp := serve(t, dns.Config{Table: serverTable(t), Upstreams: []string{up.addr}})
	for _, tt := range []struct{ network, addr string }{{"udp", udp}, {"tcp", tcp}} {
		t.Run(tt.network, func(t *testing.T) {
			m := new(miekg.Msg).SetQuestion("example.com.", miekg.TypeA)
			r := exchange(t, tt.network, tt.addr, m) // checks the ID
			if got, want := rrStrings(r.Answer), []string{"example.com. A 192.0.2.1"}; r.Rcode != miekg.RcodeSuccess || !slices.Equal(got, want) {
				t.Errorf("example.com: %s %q, want NOERROR %q", miekg.RcodeToString[r.Rcode], got, want)
			}
			if r.Authoritative {
				t.Errorf("example.com: AA set on an answer relayed from upstream")
			}
			if got := up.seen(); len(got) == 0 || got[len(got)-1] != tt.network+" example.com. A" {
				t.Errorf("upstream saw %q, want the question over %s last", got, tt.network)
			}
		})
	}
	if r := ask(t, "udp", udp, "nosuch.example.com.", miekg.TypeA, 0); r.Rcode != miekg.RcodeNameError {
		t.Errorf("nosuch.example.com: %s, want upstream's NXDOMAIN", miekg.RcodeToString[r.Rcode])
	}
	if r := ask(t, "udp", udp, "web.default.svc.cluster.local.", miekg.TypeA, 0); !r.RecursionAvailable {
		t.Errorf("RA clear on a server with upstreams")
	}
	for _, q := range up.seen() {
		if strings.Contains(q, "cluster.local") {
			t.Errorf("upstream was asked %q, a cluster name", q)
		}
	}
}

// TestServeForwardTruncated: a truncated UDP answer from upstream is asked
// again over TCP; the client gets as much as its own size allows.
func TestServeForwardTruncated(t *testing.T) {
	checkGoroutines(t)
	up := startUpstream(t, exampleAnswers)
	udp, _ := serve(t, dns.Config{Table: serverTable(t), Upstreams: []string{up.addr}})

	r := ask(t, "udp", udp, "big.example.com.", miekg.TypeA, 4096)
	if r.Truncated || len(r.Answer) != bigEndpoints {
		t.Errorf("EDNS0 4096: TC %v, %d records; want no TC, %d records", r.Truncated, len(r.Answer), bigEndpoints)
	}
	if got, want := up.seen(), []string{"udp big.example.com. A", "tcp big.example.com. A"}; !slices.Equal(got, want) {
		t.Errorf("upstream saw %q, want %q", got, want)
	}

	r = ask(t, "udp", udp, "big.example.com.", miekg.TypeA, 0)
	if !r.Truncated || len(r.Answer) == 0 || wireLen(r) > miekg.MinMsgSize {
		t.Errorf("no EDNS0: TC %v, %d records in %d bytes; want TC and what fits in 512 bytes", r.Truncated, len(r.Answer), wireLen(r))
	}
}

// TestServeForwardFallback: upstreams are tried in order; one that does not
// answer, or answers SERVFAIL, is passed over.
func TestServeForwardFallback(t *testing.T) {
	checkGoroutines(t)
	failing := startUpstream(t, func(req *miekg.Msg, _ string) *miekg.Msg {
		return new(miekg.Msg).SetRcode(req, miekg.RcodeServerFailure)
	})
	good := startUpstream(t, exampleAnswers)
	udp, _ := serve(t, dns.Config{
		Table:     serverTable(t),
		Upstreams: []string{closedPort(t), failing.addr, good.addr},
		Timeout:   time.Second,
	})
	r := ask(t, "udp", udp, "example.com.", miekg.TypeA, 0)
	if got, want := rrStrings(r.Answer), []string{"example.com. A 192.0.2.1"}; r.Rcode != miekg.RcodeSuccess || !slices.Equal(got, want) {
		t.Errorf("example.com: %s %q, want NOERROR %q from the third upstream", miekg.RcodeToString[r.Rcode], got, want)
	}
	if len(failing.seen()) != 1 {
		t.Errorf("the failing upstream saw %q, want one question", failing.seen())
	}
}

// TestServeUpstreamGone: with no upstream answering, the client gets
// SERVFAIL within the timeout.
func TestServeUpstreamGone(t *testing.T) {
	checkGoroutines(t)
	const timeout = 300 * time.Millisecond
	silent, _ := silentUpstream(t)
	tests := []struct {
		name      string
		upstreams []string
		atLeast   time.Duration
	}{
		{"silent", []string{silent}, timeout},
		{"silent twice", []string{silent, silent}, 2 * timeout},
		{"closed port", []string{closedPort(t)}, 0},
		{"none", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			udp, tcp := serve(t, dns.Config{Table: serverTable(t), Upstreams: tt.upstreams, Timeout: timeout})
			for _, network := range []string{"udp", "tcp"} {
				addr := map[string]string{"udp": udp, "tcp": tcp}[network]
				begin := time.Now()
				r := ask(t, network, addr, "example.com.", miekg.TypeA, 0)
				took := time.Since(begin)
				if r.Rcode != miekg.RcodeServerFailure {
					t.Errorf("%s: %s, want SERVFAIL", network, miekg.RcodeToString[r.Rcode])
				}
				atLeast := tt.atLeast
				if network == "tcp" {
					atLeast = 0 // the silent upstream has no TCP socket: refused at once
				}
				limit := time.Duration(len(tt.upstreams))*timeout + time.Second
				if took < atLeast || took > limit {
					t.Errorf("%s: SERVFAIL after %v, want between %v and %v", network, took, atLeast, limit)
				}
			}
		})
	}
}

// TestServeNeverForwardsToItself: an upstream on the server's own address is
// dropped.
func TestServeNeverForwardsToItself(t *testing.T) {
	checkGoroutines(t)
	up := startUpstream(t, exampleAnswers)
	self := netip.MustParseAddrPort(up.addr).Addr()
	udp, _ := serve(t, dns.Config{Table: serverTable(t), Self: self, Upstreams: []string{up.addr}})
	if r := ask(t, "udp", udp, "example.com.", miekg.TypeA, 0); r.Rcode != miekg.RcodeServerFailure {
		t.Errorf("example.com: %s, want SERVFAIL (the only upstream is the server itself)", miekg.RcodeToString[r.Rcode])
	}
	if got := up.seen(); len(got) > 0 {
		t.Errorf("the server's own address was asked %q", got)
	}
}

// TestServeShutdown: cancelling Serve's context ends a forward in flight at
// once, not after the upstream timeout.
func TestServeShutdown(t *testing.T) {
	checkGoroutines(t)
	silent, arrived := silentUpstream(t)
	srv, err := dns.New(dns.Config{Table: serverTable(t), Upstreams: []string{silent}, Timeout: time.Minute})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	pc, ln := listen(t)
	stop := start(t, srv, pc, ln)

	asked := make(chan struct{})
	go func() {
		defer close(asked)
		c := &miekg.Client{Net: "udp", Timeout: wait}
		c.Exchange(new(miekg.Msg).SetQuestion("example.com.", miekg.TypeA), pc.LocalAddr().String())
	}()
	select {
	case <-arrived:
	case <-time.After(wait):
		t.Fatal("the question did not reach upstream")
	}
	begin := time.Now()
	if err := stop(); err != nil {
		t.Errorf("Serve: %v", err)
	}
	if took := time.Since(begin); took > time.Second {
		t.Errorf("Serve returned %v after its context ended, with a forward in flight; want under 1s", took)
	}
	<-asked
}

// TestServePacketConn: a PacketConn that is not a *net.UDPConn (gVisor's
// gonet.UDPConn is one) is served too.
func TestServePacketConn(t *testing.T) {
	checkGoroutines(t)
	srv, err := dns.New(dns.Config{Table: serverTable(t)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	pc, ln := listen(t)
	ln.Close()
	stop := start(t, srv, struct{ net.PacketConn }{pc}, nil)
	r := ask(t, "udp", pc.LocalAddr().String(), "web.default.svc.cluster.local.", miekg.TypeA, 0)
	if len(r.Answer) != 1 {
		t.Errorf("web: answer %v, want one A record", r.Answer)
	}
	if err := stop(); err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// TestServeOddQuestions: what is not a plain IN query.
func TestServeOddQuestions(t *testing.T) {
	checkGoroutines(t)
	udp, _ := serve(t, dns.Config{Table: serverTable(t)})

	m := new(miekg.Msg).SetQuestion("web.default.svc.cluster.local.", miekg.TypeA)
	m.SetEdns0(1232, false)
	m.IsEdns0().SetVersion(1)
	if r := exchange(t, "udp", udp, m); r.Rcode != miekg.RcodeBadVers {
		t.Errorf("EDNS version 1: %s, want BADVERS", miekg.RcodeToString[r.Rcode])
	}

	m = new(miekg.Msg).SetNotify("cluster.local.")
	if r := exchange(t, "udp", udp, m); r.Rcode != miekg.RcodeNotImplemented {
		t.Errorf("NOTIFY: %s, want NOTIMP", miekg.RcodeToString[r.Rcode])
	}

	m = new(miekg.Msg).SetQuestion("web.default.svc.cluster.local.", miekg.TypeA)
	m.Question[0].Qclass = miekg.ClassCHAOS
	if r := exchange(t, "udp", udp, m); r.Rcode != miekg.RcodeRefused {
		t.Errorf("class CH: %s, want REFUSED", miekg.RcodeToString[r.Rcode])
	}

	// Before the first snapshot.
	udp, _ = serve(t, dns.Config{Table: new(resolver.Table)})
	if r := ask(t, "udp", udp, "web.default.svc.cluster.local.", miekg.TypeA, 0); r.Rcode != miekg.RcodeServerFailure {
		t.Errorf("no snapshot yet: %s, want SERVFAIL", miekg.RcodeToString[r.Rcode])
	}
}

func TestServeArguments(t *testing.T) {
	checkGoroutines(t)
	srv, err := dns.New(dns.Config{Table: serverTable(t)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := srv.Serve(context.Background(), nil, nil); err == nil {
		t.Errorf("Serve(nil, nil) = nil, want an error")
	}

	pc, ln := listen(t)
	stop := start(t, srv, pc, ln)
	ask(t, "udp", pc.LocalAddr().String(), "web.default.svc.cluster.local.", miekg.TypeA, 0) // it is serving
	pc2, ln2 := listen(t)
	defer pc2.Close()
	defer ln2.Close()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := srv.Serve(ctx, pc2, ln2); err == nil {
		t.Errorf("a second Serve while serving = nil, want an error")
	}
	if err := stop(); err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestNew(t *testing.T) {
	table := serverTable(t)
	tests := []struct {
		name string
		cfg  dns.Config
		ok   bool
	}{
		{"defaults", dns.Config{Table: table}, true},
		{"upstreams", dns.Config{Table: table, Upstreams: []string{"192.0.2.53", "[2001:db8::53]:5353"}}, true},
		{"no table", dns.Config{}, false},
		{"upstream name", dns.Config{Table: table, Upstreams: []string{"dns.example.com:53"}}, false},
		{"domain", dns.Config{Table: table, Domain: "bad..domain"}, false},
		{"reverse domain", dns.Config{Table: table, Domain: "in-addr.arpa"}, false},
		{"root domain", dns.Config{Table: table, Domain: "."}, false},
	}
	for _, tt := range tests {
		_, err := dns.New(tt.cfg)
		if (err == nil) != tt.ok {
			t.Errorf("New(%s) = %v, want ok %v", tt.name, err, tt.ok)
		}
	}

	srv, err := dns.New(dns.Config{Table: table, Domain: "Cluster.Local",
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.3.240.7/20")}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if z := srv.Zone(); z.Domain != "cluster.local." || !slices.Equal(z.ServiceCIDRs, []netip.Prefix{netip.MustParsePrefix("10.3.240.0/20")}) {
		t.Errorf("Zone() = %+v, want cluster.local. and 10.3.240.0/20", z)
	}
	srv.SetServiceCIDRs([]netip.Prefix{netip.MustParsePrefix("fd00:10:96::/112")})
	if z := srv.Zone(); !slices.Equal(z.ServiceCIDRs, []netip.Prefix{netip.MustParsePrefix("fd00:10:96::/112")}) {
		t.Errorf("after SetServiceCIDRs, Zone() = %+v", z)
	}
}

func TestUpstreamsFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, content string
		want          []string // nil for an error
	}{
		{"resolv.conf", `# generated
search default.svc.cluster.local svc.cluster.local
nameserver 192.0.2.53
nameserver	2001:db8::53   # trailing words are ignored
; nameserver 192.0.2.99
nameserver fe80::1%eth0
nameserver dns.example.com
nameserver
options ndots:5
`, []string{"192.0.2.53:53", "[2001:db8::53]:53", "[fe80::1%eth0]:53"}},
		{"empty", "search example.com\n", nil},
	}
	for _, tt := range tests {
		path := filepath.Join(dir, tt.name)
		if err := os.WriteFile(path, []byte(tt.content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := dns.UpstreamsFromResolvConf(path)
		if tt.want == nil {
			if err == nil {
				t.Errorf("UpstreamsFromResolvConf(%s) = %q, want an error", tt.name, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("UpstreamsFromResolvConf(%s) = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
	if _, err := dns.UpstreamsFromResolvConf(filepath.Join(dir, "missing")); err == nil {
		t.Errorf("UpstreamsFromResolvConf(missing) = nil error")
	}
}

// TestServeExternalName: the answer to an ExternalName Service whose
// target is outside the zone is its CNAME followed by upstream's records
// on the chain from the target (what else upstream adds is dropped), with
// upstream's rcode and SOA; when upstream fails, the CNAME alone.
func TestServeExternalName(t *testing.T) {
	checkGoroutines(t)
	up := startUpstream(t, func(req *miekg.Msg, network string) *miekg.Msg {
		resp := new(miekg.Msg).SetReply(req)
		q := req.Question[0]
		switch {
		case q.Name == "www.example.com." && q.Qtype == miekg.TypeA:
			resp.Answer = append(resp.Answer,
				mustRR("unrelated.example. 60 IN A 192.0.2.66"),
				mustRR("edge.example.net. 60 IN A 192.0.2.9"),
				mustRR("www.example.com. 60 IN CNAME edge.example.net."))
		case q.Name == "www.example.com.":
			resp.Ns = append(resp.Ns, mustRR("example.com. 60 IN SOA ns.example.com. h.example.com. 1 2 3 4 60"))
		case q.Name == "broken.example.com.":
			resp.Rcode = miekg.RcodeServerFailure
		case q.Name == "long.example.com.":
			// A chain of 10 CNAMEs: with the Service's own, more than 8.
			owner := q.Name
			for i := range 10 {
				next := fmt.Sprintf("c%d.example.com.", i)
				resp.Answer = append(resp.Answer, mustRR(owner+" 60 IN CNAME "+next))
				owner = next
			}
			resp.Answer = append(resp.Answer, mustRR(owner+" 60 IN A 192.0.2.10"))
		default:
			resp.Rcode = miekg.RcodeNameError
			resp.Ns = append(resp.Ns, mustRR("example.com. 60 IN SOA ns.example.com. h.example.com. 1 2 3 4 60"))
		}
		return resp
	})
	snap := build(t, []*corev1.Service{
		externalNameService("default", "ext", "www.example.com"),
		externalNameService("default", "gone", "nosuch.example.com"),
		externalNameService("default", "broken", "broken.example.com"),
		externalNameService("default", "long", "long.example.com"),
	}, nil)
	var table resolver.Table
	table.Store(snap)
	udp, tcp := serve(t, dns.Config{Table: &table, Upstreams: []string{up.addr}})

	const zone = ".default.svc.cluster.local."
	for _, tt := range []struct {
		name   string
		qtype  uint16
		rcode  int
		answer []string // in order
		soa    bool     // upstream's SOA in the authority section
	}{
		{"ext" + zone, miekg.TypeA, miekg.RcodeSuccess, []string{
			"ext" + zone + " CNAME www.example.com.",
			"www.example.com. CNAME edge.example.net.",
			"edge.example.net. A 192.0.2.9"}, false},
		{"ext" + zone, miekg.TypeAAAA, miekg.RcodeSuccess, []string{"ext" + zone + " CNAME www.example.com."}, true},
		{"gone" + zone, miekg.TypeA, miekg.RcodeNameError, []string{"gone" + zone + " CNAME nosuch.example.com."}, true},
		{"broken" + zone, miekg.TypeA, miekg.RcodeSuccess, []string{"broken" + zone + " CNAME broken.example.com."}, false},
		// The chain is cut after 8 CNAMEs.
		{"long" + zone, miekg.TypeA, miekg.RcodeSuccess, []string{
			"long" + zone + " CNAME long.example.com.",
			"long.example.com. CNAME c0.example.com.",
			"c0.example.com. CNAME c1.example.com.",
			"c1.example.com. CNAME c2.example.com.",
			"c2.example.com. CNAME c3.example.com.",
			"c3.example.com. CNAME c4.example.com.",
			"c4.example.com. CNAME c5.example.com.",
			"c5.example.com. CNAME c6.example.com."}, false},
	} {
		for _, sock := range []struct{ network, addr string }{{"udp", udp}, {"tcp", tcp}} {
			call := fmt.Sprintf("%s %s %s", sock.network, tt.name, miekg.TypeToString[tt.qtype])
			r := ask(t, sock.network, sock.addr, tt.name, tt.qtype, 1232)
			var got []string
			for _, rr := range r.Answer {
				got = append(got, rrString(rr))
			}
			if r.Rcode != tt.rcode || !slices.Equal(got, tt.answer) {
				t.Errorf("%s = %s\n\t%s\nwant %s\n\t%s", call, miekg.RcodeToString[r.Rcode], strings.Join(got, "\n\t"),
					miekg.RcodeToString[tt.rcode], strings.Join(tt.answer, "\n\t"))
			}
			if soa := len(r.Ns) == 1 && r.Ns[0].Header().Name == "example.com."; soa != tt.soa {
				t.Errorf("%s: authority %v, want upstream's SOA: %v", call, r.Ns, tt.soa)
			}
			if !r.Authoritative {
				t.Errorf("%s: AA clear, want set (the first name is the zone's)", call)
			}
		}
	}
	if got := up.seen(); !slices.Contains(got, "udp www.example.com. A") || !slices.Contains(got, "tcp www.example.com. A") {
		t.Errorf("upstream saw %q, want www.example.com A over UDP and TCP", got)
	}
}

// TestServeEndpointPTR: the PTR record of an endpoint follows the table as
// it changes (the server's endpoint index is per snapshot), also with
// questions arriving while it changes.
func TestServeEndpointPTR(t *testing.T) {
	checkGoroutines(t)
	tcp := corev1.ProtocolTCP
	port := []discoveryv1.EndpointPort{slicePort("http", tcp, 8080)}
	snapOf := func(svc string) *resolver.Snapshot {
		return build(t,
			[]*corev1.Service{clusterIPService("default", svc, []string{"10.3.240.60"}, servicePort("http", tcp, 80, 8080))},
			[]*discoveryv1.EndpointSlice{endpointSlice("default", svc+"-1", svc, discoveryv1.AddressTypeIPv4, port,
				endpoint("10.0.9.9", "", nil))})
	}
	snaps := []*resolver.Snapshot{snapOf("first"), snapOf("second")}
	var table resolver.Table
	table.Store(snaps[0])
	udp, _ := serve(t, dns.Config{Table: &table})
	name := rev("10.0.9.9")
	ptrOf := func(r *miekg.Msg) string {
		if len(r.Answer) != 1 {
			return fmt.Sprintf("%s with %d records", miekg.RcodeToString[r.Rcode], len(r.Answer))
		}
		return r.Answer[0].(*miekg.PTR).Ptr
	}

	for i, want := range []string{"10-0-9-9.first.default.svc.cluster.local.", "10-0-9-9.second.default.svc.cluster.local."} {
		table.Store(snaps[i])
		if got := ptrOf(ask(t, "udp", udp, name, miekg.TypePTR, 0)); got != want {
			t.Errorf("PTR %s after snapshot %d = %s, want %s", name, i, got, want)
		}
	}

	// 4 askers, 50 questions each, while the table flips between the two.
	var wg sync.WaitGroup
	errs := make(chan string, 200)
	for range 4 {
		wg.Go(func() {
			c := &miekg.Client{Net: "udp", Timeout: wait}
			for range 50 {
				r, _, err := c.Exchange(new(miekg.Msg).SetQuestion(name, miekg.TypePTR), udp)
				if err != nil {
					errs <- err.Error()
					continue
				}
				if got := ptrOf(r); !strings.HasPrefix(got, "10-0-9-9.") {
					errs <- got
				}
			}
		})
	}
	for i := range 200 {
		table.Store(snaps[i%2])
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("PTR %s while the table changes: %s", name, e)
	}
}
