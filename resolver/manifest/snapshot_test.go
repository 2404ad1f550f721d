package manifest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kubetun/kubetun/resolver"
)

// writeSnapshot writes what `kubectl get services,endpointslices -A -o yaml`
// prints for n Services, each with one port and one EndpointSlice of two
// ready pods: one List, the Services first, keys in the order kubectl
// prints them (sorted), managedFields left out as kubectl does by default.
func writeSnapshot(w io.Writer, n int) error {
	b := bufio.NewWriter(w)
	b.WriteString("apiVersion: v1\nitems:\n")
	for i := range n {
		name, ns := fmt.Sprintf("svc-%05d", i), fmt.Sprintf("team-%03d", i%300)
		ip := fmt.Sprintf("10.100.%d.%d", i/250, i%250+1)
		fmt.Fprintf(b, `- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2026-11-24T10:00:00Z"
    labels:
      app: %[1]s
    name: %[1]s
    namespace: %[2]s
    resourceVersion: "%[4]d"
    uid: 0b6f7c1e-3a53-4e0b-9c2d-%012[4]x
  spec:
    clusterIP: %[3]s
    clusterIPs:
    - %[3]s
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - name: http
      port: 80
      protocol: TCP
      targetPort: http
    selector:
      app: %[1]s
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
`, name, ns, ip, 100000+i)
	}
	for i := range n {
		name, ns := fmt.Sprintf("svc-%05d", i), fmt.Sprintf("team-%03d", i%300)
		b.WriteString("- addressType: IPv4\n  apiVersion: discovery.k8s.io/v1\n  endpoints:\n")
		for j := range 2 {
			fmt.Fprintf(b, `  - addresses:
    - 10.%[1]d.%[2]d.%[3]d
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node-%[4]d
    targetRef:
      kind: Pod
      name: %[5]s-6ffd9ddbbf-%[6]05x
      namespace: %[7]s
      uid: 5d1c2b7a-8e0f-4c1d-9a3b-%012[6]x
`, 4+j, i/250, i%250+1, (i+j)%50, name, 2*i+j, ns)
		}
		fmt.Fprintf(b, `  kind: EndpointSlice
  metadata:
    creationTimestamp: "2026-11-24T10:00:00Z"
    generateName: %[1]s-
    generation: 1
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: %[1]s
    name: %[1]s-x7k2p
    namespace: %[2]s
    ownerReferences:
    - apiVersion: v1
      blockOwnerDeletion: true
      controller: true
      kind: Service
      name: %[1]s
      uid: 0b6f7c1e-3a53-4e0b-9c2d-%012[3]x
    resourceVersion: "%[4]d"
    uid: 7e2d9c4b-1f3a-4b5c-8d6e-%012[3]x
  ports:
  - name: http
    port: 8080
    protocol: TCP
`, name, ns, 100000+i, 200000+i)
	}
	b.WriteString("kind: List\nmetadata:\n  resourceVersion: \"\"\n")
	return b.Flush()
}

// TestLoadSnapshot loads what kubectl prints for 30 000 Services with their
// EndpointSlices, one List in one file, through a Source, and logs what that
// costs: the file's size, the time and CPU time the decode takes, the heap
// the objects keep and the heap at its peak while decoding. Then it changes
// one endpoint and logs what the change costs. Timings are logged, never
// asserted: the machine may be shared.
func TestLoadSnapshot(t *testing.T) {
	if raceEnabled {
		t.Skip("decoding 56 MB takes minutes under the race detector; the other tests cover the same code")
	}
	const n = 30_000
	dir := t.TempDir()
	path := filepath.Join(dir, "services.yaml")
	writeSnapshotFile(t, path, n, "")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}

	m := startMeasure()
	src, objs, err := NewSource(path, discardLogger())
	cost := m.stop()
	if err != nil {
		t.Fatalf("NewSource: %v", err)
	}
	if len(objs.Services) != n || len(objs.Slices) != n || len(objs.Warnings) != 0 {
		t.Fatalf("NewSource: %d Services, %d EndpointSlices, warnings %q; want %d, %d and none",
			len(objs.Services), len(objs.Slices), objs.Warnings, n, n)
	}
	t.Logf("%d Services with their EndpointSlices, %.1f MB as kubectl prints them: loaded in %v (%v CPU); heap kept %.0f MB, at the peak %.0f MB",
		n, float64(fi.Size())/1e6, cost.wall.Round(time.Millisecond), cost.cpu.Round(time.Millisecond), cost.kept/1e6, cost.peak/1e6)

	start := time.Now()
	snap, problems := resolver.Build(objs.Services, objs.Slices, nil, resolver.Topology{})
	t.Logf("resolver.Build of the loaded objects: %v", time.Since(start).Round(time.Millisecond))
	if len(problems) > 0 {
		t.Errorf("Build problems: %v", problems[:min(len(problems), 5)])
	}
	last := netip.MustParseAddrPort(fmt.Sprintf("10.100.%d.%d:80", (n-1)/250, (n-1)%250+1))
	if sp, ok := snap.Lookup(resolver.TCP, last); !ok || len(sp.Usable()) != 2 {
		t.Fatalf("Lookup(TCP, %v) = %v, %v; want Service svc-%05d with two endpoints", last, sp, ok, n-1)
	}

	// One endpoint changed: the file is read and decoded again.
	writeSnapshotFile(t, path, n, "10.5.0.1")
	m = startMeasure()
	sum, files, err := src.poll(time.Now())
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	objs = src.objects(files)
	cost = m.stop()
	if sum == src.applied {
		t.Fatal("poll after a change: the same digest")
	}
	if got := objs.Slices[0].Endpoints[0].Addresses[0]; got != "10.5.0.1" {
		t.Errorf("after the change, the first endpoint is %s, want 10.5.0.1", got)
	}
	t.Logf("one endpoint changed: read and decoded again in %v (%v CPU); heap at the peak %.0f MB",
		cost.wall.Round(time.Millisecond), cost.cpu.Round(time.Millisecond), cost.peak/1e6)
}

// writeSnapshotFile writes writeSnapshot's n Services to path, with the
// first endpoint's address replaced by first if it is not "".
func writeSnapshotFile(tb testing.TB, path string, n int, first string) {
	tb.Helper()
	var b bytes.Buffer
	if err := writeSnapshot(&b, n); err != nil {
		tb.Fatal(err)
	}
	data := b.Bytes()
	if first != "" {
		data = bytes.Replace(data, []byte("    - 10.4.0.1\n"), []byte("    - "+first+"\n"), 1)
	}
	replaceFile(tb, path, string(data))
}

// measure samples the heap while something runs.
type measure struct {
	base       runtime.MemStats
	start      time.Time
	startCPU   time.Duration
	peak       atomic.Uint64
	stopSample chan struct{}
	done       chan struct{}
}

type measured struct {
	wall, cpu  time.Duration
	kept, peak float64 // bytes of heap over the start's
}

func startMeasure() *measure {
	runtime.GC()
	m := &measure{stopSample: make(chan struct{}), done: make(chan struct{})}
	runtime.ReadMemStats(&m.base)
	go func() {
		defer close(m.done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > m.peak.Load() {
				m.peak.Store(ms.HeapAlloc)
			}
			select {
			case <-m.stopSample:
				return
			case <-t.C:
			}
		}
	}()
	m.start, m.startCPU = time.Now(), cpuTime()
	return m
}

func (m *measure) stop() measured {
	out := measured{wall: time.Since(m.start), cpu: cpuTime() - m.startCPU}
	close(m.stopSample)
	<-m.done
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	out.kept = float64(ms.HeapAlloc) - float64(m.base.HeapAlloc)
	out.peak = float64(m.peak.Load()) - float64(m.base.HeapAlloc)
	return out
}

// cpuTime is the CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
