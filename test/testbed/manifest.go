package testbed

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// ServicePort is one port of the test Service and what the EndpointSlice
// controller resolves its target port to.
type ServicePort struct {
	// Name is the Service port's name, and so the EndpointSlice port's name.
	// It may be empty only when the Service has a single port.
	Name string
	// Port is the Service port, reached at ClusterIP:Port.
	Port int
	// TargetPort is the Service's targetPort as written: a number or a
	// container port name such as "http".
	TargetPort string
	// EndpointPort is the number the controller puts in the EndpointSlice
	// (a named TargetPort resolved through the pod's container ports).
	EndpointPort int
	// Protocol is "TCP" or "UDP" (or "SCTP"), in the Service and the
	// EndpointSlice alike; empty means TCP, as in the API.
	Protocol string
	// NodePort is the port's nodePort, written when the Service's type is
	// NodePort or LoadBalancer.
	NodePort int
}

// SeedPorts is the seed Service's one port, unnamed: port 80, targetPort http,
// which the pods' container port "http" makes 8080.
var SeedPorts = []ServicePort{
	{Name: "", Port: 80, TargetPort: "http", EndpointPort: 8080},
}

// TestPorts adds podserver's echo and bytes ports to the seed's. A Service with
// several ports must name each of them, so port 80 is named "http" here.
var TestPorts = []ServicePort{
	{Name: "http", Port: 80, TargetPort: "http", EndpointPort: 8080},
	{Name: "echo", Port: 7, TargetPort: "9000", EndpointPort: 9000},
	{Name: "bytes", Port: 9, TargetPort: "9001", EndpointPort: 9001},
}

// Endpoint is one pod behind the Service, as the EndpointSlice lists it.
type Endpoint struct {
	IP   netip.Addr
	Pod  string // the targetRef's Pod name
	Node string // nodeName
	// NotReady marks the pod not ready (and not serving), as after a failed
	// readiness probe.
	NotReady bool
}

// EndpointOf returns h as a ready Endpoint on the node.
func EndpointOf(h *Host) Endpoint {
	return Endpoint{IP: h.IP, Pod: h.Name, Node: NodeName}
}

// Manifest is the seed Service (service-test in namespace default, ClusterIP
// 10.3.241.152, selector app=service_test_pod) and the EndpointSlice the
// EndpointSlice controller would write for its pods.
type Manifest struct {
	Ports     []ServicePort
	Endpoints []Endpoint
}

// YAML renders the manifest as two YAML documents, the way
// `kubectl get -o yaml` prints these objects.
func (m Manifest) YAML() ([]byte, error) {
	return ServicesYAML(Service{
		Name:       "service-test",
		ClusterIPs: []netip.Addr{netip.MustParseAddr(ClusterIP)},
		Selector:   "service_test_pod",
		Ports:      m.Ports,
		Endpoints:  m.Endpoints,
	})
}

// Write renders the manifest into path atomically.
func (m Manifest) Write(path string) error {
	data, err := m.YAML()
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, data)
}

// WriteFileAtomic writes data to a temporary file in path's directory and
// renames it over path, so a reader polling path (kubetun) sees the old content
// or the new, never half of it.
func WriteFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("testbed: write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("testbed: write %s: %w", path, err)
	}
	return nil
}
