package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// iperfSlack is how much longer than --time an iperf3 run may take (its
// handshake, the results exchange) before it is killed.
const iperfSlack = 20 * time.Second

// iperfTries is how often a run is started when the server says it is busy
// (it is still finishing the previous test).
const iperfTries = 3

// iperfResult is the part of iperf3 --json's "end" the bench reads.
type iperfResult struct {
	sent, received iperfSum
	// senderCPU and receiverCPU are the two iperf3 processes' CPU, in
	// percent of one core, which shows when iperf3 itself is the limit.
	senderCPU, receiverCPU float64
}

// iperfSum is iperf3's sum_sent or sum_received. The UDP fields are zero
// for TCP and Retransmits is zero for UDP.
type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         int64   `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Retransmits   int     `json:"retransmits"`
	// Packets is the highest datagram number the receiver saw, LostPackets
	// the gaps below it, so Packets - LostPackets arrived.
	Packets     int64   `json:"packets"`
	LostPackets int64   `json:"lost_packets"`
	LostPercent float64 `json:"lost_percent"`
}

// iperfJSON is iperf3 --json's output, as far as the bench reads it.
type iperfJSON struct {
	Error string `json:"error"`
	End   struct {
		SumSent     iperfSum `json:"sum_sent"`
		SumReceived iperfSum `json:"sum_received"`
		CPU         struct {
			HostTotal   float64 `json:"host_total"`
			RemoteTotal float64 `json:"remote_total"`
		} `json:"cpu_utilization_percent"`
	} `json:"end"`
}

// iperf runs one iperf3 client in namespace ns against target:iperfPort for
// --time, one stream, and returns what it measured.
func (b *bench) iperf(ctx context.Context, ns, target string, args ...string) (iperfResult, error) {
	host, port := target, iperfPort
	if ap, err := netip.ParseAddrPort(target); err == nil {
		host, port = ap.Addr().String(), int(ap.Port())
	}
	argv := []string{"iperf3", "-c", host, "-p", strconv.Itoa(port), "-P", "1",
		"-t", strconv.Itoa(int(b.cfg.duration / time.Second)), "--connect-timeout", "3000", "--json"}
	argv = append(argv, args...)
	reverse := false
	for _, a := range args {
		reverse = reverse || a == "-R"
	}
	var lastErr error
	for try := 1; try <= iperfTries; try++ {
		rctx, cancel := context.WithTimeout(ctx, b.cfg.duration+iperfSlack)
		out, err := b.tb.Run(rctx, ns, argv...)
		cancel()
		var j iperfJSON
		if jerr := json.Unmarshal([]byte(out), &j); jerr != nil {
			if err == nil {
				err = fmt.Errorf("iperf3 --json output: %v", jerr)
			}
			return iperfResult{}, err
		}
		if j.Error != "" {
			lastErr = fmt.Errorf("in netns %s: %s: %s", ns, strings.Join(argv, " "), j.Error)
			if strings.Contains(j.Error, "busy") && try < iperfTries {
				select {
				case <-ctx.Done():
					return iperfResult{}, ctx.Err()
				case <-time.After(time.Second):
				}
				continue
			}
			return iperfResult{}, lastErr
		}
		if err != nil {
			return iperfResult{}, err
		}
		r := iperfResult{sent: j.End.SumSent, received: j.End.SumReceived,
			senderCPU: j.End.CPU.HostTotal, receiverCPU: j.End.CPU.RemoteTotal}
		if reverse { // the client, whose CPU is "host", receives
			r.senderCPU, r.receiverCPU = r.receiverCPU, r.senderCPU
		}
		return r, nil
	}
	return iperfResult{}, lastErr
}

// iperfVersion is "3.12" from `iperf3 --version`, or "?".
func iperfVersion(ctx context.Context) string {
	out, err := exec.CommandContext(ctx, "iperf3", "--version").Output()
	if f := strings.Fields(string(out)); err == nil && len(f) >= 2 {
		return f[1]
	}
	return "?"
}
