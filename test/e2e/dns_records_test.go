package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/test/testbed"
)

// dnsRecordsYAML are the Services TestDNSServiceRecords adds to
// dualServices, in the manifest's YAML (testbed.Service has ClusterIP
// Services only): ExternalName Services to a name outside the cluster
// (the upstream DNS server's upstream.test) and inside it (service-test),
// and a headless Service db whose one endpoint, pod1 (both families), is
// named db-0.
const dnsRecordsYAML = `---
apiVersion: v1
kind: Service
metadata:
  name: ext
  namespace: default
spec:
  type: ExternalName
  externalName: upstream.test
---
apiVersion: v1
kind: Service
metadata:
  name: ext-in
  namespace: default
spec:
  type: ExternalName
  externalName: service-test.default.svc.cluster.local
---
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: default
spec:
  clusterIP: None
  clusterIPs:
  - None
  selector:
    app: db
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-4xk2p
  namespace: default
  labels:
    kubernetes.io/service-name: db
    service.kubernetes.io/headless: ""
addressType: IPv4
endpoints:
- addresses:
  - 10.0.1.2
  hostname: db-0
  conditions:
    ready: true
ports:
- name: http
  port: 8080
  protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-6xk2p
  namespace: default
  labels:
    kubernetes.io/service-name: db
    service.kubernetes.io/headless: ""
addressType: IPv6
endpoints:
- addresses:
  - fd00:10:1::2
  hostname: db-0
  conditions:
    ready: true
ports:
- name: http
  port: 8080
  protocol: TCP
`

// TestDNSServiceRecords asks kubetun's DNS with dig and glibc's getent from
// the client, dual-stack: an ExternalName Service answers its CNAME and the
// target's addresses — from the upstream DNS server for an outside name,
// from the table for a Service's — so `getent hosts` resolves it; every
// endpoint of every Service has a PTR record (pod1, also db's endpoint
// db-0, is named by that hostname) whose name resolves back; and a
// Service's bare name has SRV records, one per port.
func TestDNSServiceRecords(t *testing.T) {
	b := newSvcBed(t, true)
	eps := []testbed.Endpoint{testbed.EndpointOf(b.Pod1), testbed.EndpointOf(b.Pod2), testbed.EndpointOf6(b.Pod1), testbed.EndpointOf6(b.Pod2)}
	yaml, err := testbed.ServicesYAML(dualServices(eps...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b.ManifestPath, append(yaml, dnsRecordsYAML...), 0o644); err != nil {
		t.Fatal(err)
	}
	b.start(t, []string{testbed.ServiceCIDR, testbed.ServiceCIDR6})

	const (
		svc  = "service-test.default.svc.cluster.local."
		ext  = "ext.default.svc.cluster.local."
		in   = "ext-in.default.svc.cluster.local."
		db0  = "db-0.db.default.svc.cluster.local."
		pod2 = "10-0-2-2." + svc
		pod6 = "fd00-10-2--2." + svc
	)
	t.Run("dig", func(t *testing.T) {
		checkDig(t, b, dnsIP, []digCase{
			// ExternalName, outside: CNAME, then upstream's records.
			{[]string{ext, "A"}, "NOERROR", []string{"CNAME upstream.test.", "A 192.0.2.7"}},
			{[]string{ext, "AAAA"}, "NOERROR", []string{"CNAME upstream.test.", "AAAA 2001:db8::7"}},
			{[]string{"+tcp", ext, "A"}, "NOERROR", []string{"CNAME upstream.test.", "A 192.0.2.7"}},
			// ExternalName, inside: CNAME, then the table's records.
			{[]string{in, "A"}, "NOERROR", []string{"CNAME " + svc, "A " + testbed.ClusterIP}},
			{[]string{in, "AAAA"}, "NOERROR", []string{"CNAME " + svc, "AAAA " + testbed.ClusterIP6}},
			// PTR for every endpoint, and its name resolves back.
			{[]string{"-x", b.Pod2.IP.String()}, "NOERROR", []string{"PTR " + pod2}},
			{[]string{"-x", testbed.IPv6Of(b.Pod2).String()}, "NOERROR", []string{"PTR " + pod6}},
			{[]string{"-x", b.Pod1.IP.String()}, "NOERROR", []string{"PTR " + db0}},
			{[]string{"-x", testbed.IPv6Of(b.Pod1).String()}, "NOERROR", []string{"PTR " + db0}},
			{[]string{pod2, "A"}, "NOERROR", []string{"A " + b.Pod2.IP.String()}},
			{[]string{pod6, "AAAA"}, "NOERROR", []string{"AAAA " + testbed.IPv6Of(b.Pod2).String()}},
			// SRV of the bare name: one per port (7 is on TCP and UDP: one).
			{[]string{svc, "SRV"}, "NOERROR", []string{"SRV 80 " + svc, "SRV 7 " + svc}},
			{[]string{"db.default.svc.cluster.local.", "SRV"}, "NOERROR", []string{"SRV 8080 " + db0}},
		})
	})

	t.Run("getent", func(t *testing.T) {
		writePodResolvConf(t, b.Testbed, b.Client, dnsIP)
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		for _, tc := range []struct {
			args []string
			want []string // each in the output
		}{
			{[]string{"hosts", "ext.default.svc.cluster.local"}, []string{"2001:db8::7", "upstream.test"}},
			{[]string{"ahosts", "ext"}, []string{"192.0.2.7", "2001:db8::7"}},
			{[]string{"ahostsv4", "ext-in.default"}, []string{testbed.ClusterIP}},
			{[]string{"hosts", b.Pod2.IP.String()}, []string{strings.TrimSuffix(pod2, ".")}},
			{[]string{"hosts", testbed.IPv6Of(b.Pod2).String()}, []string{strings.TrimSuffix(pod6, ".")}},
			{[]string{"hosts", b.Pod1.IP.String()}, []string{strings.TrimSuffix(db0, ".")}},
		} {
			out, err := b.Run(ctx, b.Client.Namespace, append([]string{"getent"}, tc.args...)...)
			missing := err != nil
			for _, w := range tc.want {
				missing = missing || !strings.Contains(out, w)
			}
			if missing {
				t.Errorf("getent %s in the client = %q, %v; want %q in it", strings.Join(tc.args, " "), out, err, tc.want)
			}
			t.Logf("getent %s: %s", strings.Join(tc.args, " "), strings.TrimSpace(out))
		}
	})
}
