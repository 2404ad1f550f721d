package testbed

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// decode splits the manifest into its two documents and decodes them strictly
// (an unknown field is an error) into the API types kubetun reads.
func decode(t *testing.T, data []byte) (corev1.Service, discoveryv1.EndpointSlice) {
	t.Helper()
	var svc corev1.Service
	var slice discoveryv1.EndpointSlice
	r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for i, into := range []any{&svc, &slice} {
		doc, err := r.Read()
		if err != nil {
			t.Fatalf("document %d: %v\n%s", i, err, data)
		}
		js, err := yaml.ToJSON(doc)
		if err != nil {
			t.Fatalf("document %d: ToJSON: %v\n%s", i, err, doc)
		}
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(into); err != nil {
			t.Fatalf("document %d: decode: %v\n%s", i, err, doc)
		}
	}
	if _, err := r.Read(); !errors.Is(err, io.EOF) {
		t.Errorf("a third document, or %v; want two documents", err)
	}
	return svc, slice
}

func TestManifestSeed(t *testing.T) {
	m := Manifest{Ports: SeedPorts, Endpoints: []Endpoint{
		{IP: netip.MustParseAddr("10.0.1.2"), Pod: "pod1", Node: NodeName},
		{IP: netip.MustParseAddr("10.0.2.2"), Pod: "pod2", Node: NodeName, NotReady: true},
	}}
	data, err := m.YAML()
	if err != nil {
		t.Fatal(err)
	}
	svc, slice := decode(t, data)

	if svc.Kind != "Service" || svc.APIVersion != "v1" || svc.Name != "service-test" || svc.Namespace != "default" {
		t.Errorf("Service = %s %s %s/%s, want v1 Service default/service-test", svc.APIVersion, svc.Kind, svc.Namespace, svc.Name)
	}
	if svc.Spec.ClusterIP != ClusterIP || svc.Spec.Selector["app"] != "service_test_pod" {
		t.Errorf("Service clusterIP %s selector %v, want %s app=service_test_pod", svc.Spec.ClusterIP, svc.Spec.Selector, ClusterIP)
	}
	if len(svc.Spec.Ports) != 1 {
		t.Fatalf("Service ports = %+v, want one", svc.Spec.Ports)
	}
	if p := svc.Spec.Ports[0]; p.Name != "" || p.Port != 80 || p.TargetPort.StrVal != "http" || p.Protocol != corev1.ProtocolTCP {
		t.Errorf("Service port = %+v, want unnamed 80/TCP → targetPort http", p)
	}

	if slice.Kind != "EndpointSlice" || slice.APIVersion != "discovery.k8s.io/v1" || slice.AddressType != discoveryv1.AddressTypeIPv4 {
		t.Errorf("slice = %s %s addressType %s", slice.APIVersion, slice.Kind, slice.AddressType)
	}
	if got := slice.Labels[discoveryv1.LabelServiceName]; got != "service-test" {
		t.Errorf("slice label %s = %q, want service-test", discoveryv1.LabelServiceName, got)
	}
	if len(slice.Ports) != 1 || slice.Ports[0].Name == nil || *slice.Ports[0].Name != "" || *slice.Ports[0].Port != 8080 {
		t.Errorf("slice ports = %+v, want one named \"\" with port 8080", slice.Ports)
	}
	if len(slice.Endpoints) != 2 {
		t.Fatalf("slice endpoints = %+v, want two", slice.Endpoints)
	}
	for i, want := range []bool{true, false} {
		e := slice.Endpoints[i]
		if e.Conditions.Ready == nil || *e.Conditions.Ready != want || *e.Conditions.Serving != want || *e.Conditions.Terminating {
			t.Errorf("endpoint %d conditions = %+v, want ready=serving=%v, terminating=false", i, e.Conditions, want)
		}
		if e.TargetRef == nil || e.TargetRef.Kind != "Pod" || e.NodeName == nil || *e.NodeName != NodeName {
			t.Errorf("endpoint %d targetRef %+v nodeName %v, want a Pod on %s", i, e.TargetRef, e.NodeName, NodeName)
		}
	}
	if got := slice.Endpoints[0].Addresses; len(got) != 1 || got[0] != "10.0.1.2" {
		t.Errorf("endpoint 0 addresses = %v, want [10.0.1.2]", got)
	}
}

func TestManifestTestPortsNoEndpoints(t *testing.T) {
	data, err := Manifest{Ports: TestPorts}.YAML()
	if err != nil {
		t.Fatal(err)
	}
	svc, slice := decode(t, data)
	if len(svc.Spec.Ports) != len(TestPorts) || len(slice.Ports) != len(TestPorts) {
		t.Fatalf("ports: Service %d, slice %d; want %d each", len(svc.Spec.Ports), len(slice.Ports), len(TestPorts))
	}
	for i, want := range TestPorts {
		sp, ep := svc.Spec.Ports[i], slice.Ports[i]
		if sp.Name != want.Name || int(sp.Port) != want.Port || sp.TargetPort.String() != want.TargetPort {
			t.Errorf("Service port %d = %+v, want %+v", i, sp, want)
		}
		if *ep.Name != want.Name || int(*ep.Port) != want.EndpointPort {
			t.Errorf("slice port %d = %s:%d, want %s:%d", i, *ep.Name, *ep.Port, want.Name, want.EndpointPort)
		}
	}
	if len(slice.Endpoints) != 0 {
		t.Errorf("slice endpoints = %+v, want none", slice.Endpoints)
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.yaml")
	for _, content := range []string{"first\n", "second\n"} {
		if err := WriteFileAtomic(path, []byte(content)); err != nil {
			t.Fatalf("WriteFileAtomic: %v", err)
		}
		if got, err := os.ReadFile(path); string(got) != content || err != nil {
			t.Errorf("ReadFile = %q, %v; want %q", got, err, content)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only m.yaml (no temporary file left)", len(entries))
	}
	if err := WriteFileAtomic(filepath.Join(dir, "no-such-dir", "m.yaml"), nil); err == nil {
		t.Errorf("WriteFileAtomic into a missing directory succeeded")
	}
}

func TestManifestProtocol(t *testing.T) {
	ports := []ServicePort{
		{Name: "iperf", Port: 5201, TargetPort: "5201", EndpointPort: 5201},
		{Name: "iperf-udp", Port: 5201, TargetPort: "5201", EndpointPort: 5201, Protocol: "UDP"},
	}
	data, err := Manifest{Ports: ports}.YAML()
	if err != nil {
		t.Fatal(err)
	}
	svc, slice := decode(t, data)
	for i, want := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
		if got := svc.Spec.Ports[i].Protocol; got != want {
			t.Errorf("Service port %d protocol = %s, want %s", i, got, want)
		}
		if got := slice.Ports[i].Protocol; got == nil || *got != want {
			t.Errorf("slice port %d protocol = %v, want %s", i, got, want)
		}
	}
}
