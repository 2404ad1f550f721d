// Package dns is kubetun's cluster DNS server. It answers the names of the
// Kubernetes DNS specification (github.com/kubernetes/dns,
// docs/specification.md, schema 1.1.0) from the same immutable
// [resolver.Snapshot] the packet path uses, and forwards every other name
// to upstream servers.
//
// [Zone.Answer] is the whole specification as a pure function: snapshot,
// name and type in; rcode and records out, or "forward this", or "ask
// upstream for the rest of this CNAME chain" (an ExternalName Service's
// outside target). [Server] puts it on a UDP socket and a TCP listener
// (inside the TUN's netstack, or any other), and adds what only a server
// needs: EDNS0, truncation, forwarding with a timeout, completing CNAME
// chains through the upstream, SERVFAIL when no upstream answers.
//
// # Why github.com/miekg/dns
//
// The choice was miekg/dns or golang.org/x/net/dns/dnsmessage. dnsmessage
// is a message codec only: it has no server (no UDP/TCP loops, no TCP
// framing, no per-query goroutines, no graceful shutdown), no client (a
// forwarder needs exchange, ID matching, TCP retry on truncation), no
// truncation helper, and its builder makes every record type a separate
// call with manual section bookkeeping — a server on top of it means
// writing the parts that are easy to get wrong. miekg/dns has all of that:
// [github.com/miekg/dns.Server] serves a given PacketConn and Listener (so
// a gVisor gonet socket works as well as a kernel one) with
// NotifyStartedFunc and a shutdown that waits for its handlers;
// [github.com/miekg/dns.Client] does the upstream exchange; Msg.Truncate
// honours EDNS0 sizes; every RR type (SRV, PTR, SOA, CNAME, TXT, OPT) is a
// plain struct. It is the library CoreDNS — the cluster DNS kubetun stands
// in for — is built on, so it is maintained, fuzzed, and answers exactly
// the way clients of cluster DNS already expect. No wire format is parsed
// by hand here.
package dns
