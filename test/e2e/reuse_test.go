package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// TestSourcePortReuse sends two requests in a row from the same source port,
// as a busy client does once its ephemeral ports wrap around. The pod closes
// first, so the side that holds TIME_WAIT is kubetun's (the client's kernel
// does not), and the second SYN arrives for a 4-tuple kubetun still remembers.
// A Linux server accepts such a SYN (its sequence number is higher, RFC 1122
// 4.2.2.13); the direct path to the pod is checked the same way, as the reference.
func TestSourcePortReuse(t *testing.T) {
	c := startCluster(t, testbed.SeedPorts)
	for _, tc := range []struct {
		name, ip string
		port     int
		srcPort  int
	}{
		{"direct_to_pod", c.Pod1.IP.String(), 8080, 40001},
		{"through_kubetun", testbed.ClusterIP, 80, 40002},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := 1; i <= 2; i++ {
				ctx, cancel := context.WithTimeout(t.Context(), 4*time.Second)
				began := time.Now()
				out, err := c.Run(ctx, c.Client.Namespace, "sh", "-c",
					fmt.Sprintf(`echo 'GET / HTTP/1.1\r\n\r\n' | nc -p %d %s %d`, tc.srcPort, tc.ip, tc.port))
				cancel()
				if err != nil || !helloRE.MatchString(out) {
					logSockets(t, c.Testbed, c.Client.Namespace, c.Node)
					t.Fatalf("request %d from source port %d to %s:%d: %q, %v after %v", i, tc.srcPort, tc.ip, tc.port, out, err, time.Since(began))
				}
			}
		})
	}
}
