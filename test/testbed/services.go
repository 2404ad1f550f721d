package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"text/template"
)

// Service is a ClusterIP Service of any name and address families, and the
// EndpointSlices the EndpointSlice controller would write for it: one per
// family of its ClusterIPs (addressType IPv4 or IPv6), each holding the
// endpoints of that family. It covers what Manifest (the seed's one IPv4
// Service) does not: other names and ClusterIPs, IPv6, dual-stack, and
// several Services in one file (ServicesYAML).
type Service struct {
	// Name is the Service's name; required.
	Name string
	// Namespace is the Service's namespace; empty means "default".
	Namespace string
	// ClusterIPs are the Service's addresses, the primary family first:
	// one address (single-stack) or one of each family (dual-stack).
	ClusterIPs []netip.Addr
	// Selector is the value of the Service's app= selector; empty means
	// Name.
	Selector string
	// Ports are the Service's ports, as in Manifest.
	Ports []ServicePort
	// Endpoints are the pods behind the Service, of either family; each
	// goes into the slice of its family. None: the slices are empty.
	Endpoints []Endpoint

	// Type is the Service's type; empty means ClusterIP. With NodePort or
	// LoadBalancer, each port's NodePort is written.
	Type string
	// ExternalIPs are the Service's spec.externalIPs.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are written as status.loadBalancer.ingress[].ip (ipMode
	// unset), for type LoadBalancer, as a cloud's controller writes them.
	LoadBalancerIPs []netip.Addr
	// ExternalTrafficPolicy is "Cluster" or "Local"; empty writes none.
	ExternalTrafficPolicy string
	// HealthCheckNodePort is spec.healthCheckNodePort; 0 writes none.
	HealthCheckNodePort int
}

// family is one address family of a Service: its name in the API and the
// slice that holds its endpoints.
type family struct {
	Name      string // "IPv4" or "IPv6"
	Slice     string // the EndpointSlice's name
	Endpoints []Endpoint
}

// families checks s and splits its endpoints by the families of its ClusterIPs.
func (s Service) families() ([]family, error) {
	if s.Name == "" {
		return nil, errors.New("testbed: Service without a name")
	}
	if n := len(s.ClusterIPs); n == 0 || n > 2 {
		return nil, fmt.Errorf("testbed: Service %s: %d ClusterIPs, want 1 (single-stack) or 2 (dual-stack)", s.Name, n)
	}
	var fams []family
	index := map[bool]int{} // Is4 → index in fams
	for _, ip := range s.ClusterIPs {
		if _, dup := index[ip.Is4()]; dup || !ip.IsValid() {
			return nil, fmt.Errorf("testbed: Service %s: ClusterIPs %v: want valid addresses, at most one per family", s.Name, s.ClusterIPs)
		}
		f := family{Name: "IPv4", Slice: s.Name + "-4xk2p"}
		if ip.Is6() {
			f = family{Name: "IPv6", Slice: s.Name + "-6xk2p"}
		}
		index[ip.Is4()] = len(fams)
		fams = append(fams, f)
	}
	for _, ep := range s.Endpoints {
		i, ok := index[ep.IP.Is4()]
		if !ok {
			return nil, fmt.Errorf("testbed: Service %s: endpoint %s: no ClusterIP of its family in %v", s.Name, ep.IP, s.ClusterIPs)
		}
		fams[i].Endpoints = append(fams[i].Endpoints, ep)
	}
	return fams, nil
}

// ServicesYAML renders the Services and their EndpointSlices as YAML
// documents, the way `kubectl get -o yaml` prints these objects.
func ServicesYAML(svcs ...Service) ([]byte, error) {
	var b bytes.Buffer
	for i, s := range svcs {
		fams, err := s.families()
		if err != nil {
			return nil, err
		}
		if s.Namespace == "" {
			s.Namespace = "default"
		}
		if s.Selector == "" {
			s.Selector = s.Name
		}
		if i > 0 {
			b.WriteString("---\n")
		}
		data := struct {
			Service
			Families []family
			Policy   string
		}{s, fams, "SingleStack"}
		if len(fams) == 2 {
			data.Policy = "RequireDualStack"
		}
		if err := servicesTemplate.Execute(&b, data); err != nil {
			return nil, fmt.Errorf("testbed: render Service %s: %w", s.Name, err)
		}
	}
	return b.Bytes(), nil
}

// WriteServices renders svcs into path atomically (see WriteFileAtomic).
func WriteServices(path string, svcs ...Service) error {
	data, err := ServicesYAML(svcs...)
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, data)
}

// servicesTemplate renders one Service and its slices. The slices' names
// carry a random-looking suffix as the controller's generateName gives it,
// the controller's labels, and the resolved ports under the Service ports'
// names ("" for a single unnamed port).
var servicesTemplate = template.Must(template.New("services").Parse(`apiVersion: v1
kind: Service
metadata:
  name: {{.Name}}
  namespace: {{.Namespace}}
spec:
  type: {{or .Type "ClusterIP"}}
  clusterIP: {{index .ClusterIPs 0}}
  clusterIPs:
{{- range .ClusterIPs}}
  - {{.}}
{{- end}}
  ipFamilies:
{{- range .Families}}
  - {{.Name}}
{{- end}}
  ipFamilyPolicy: {{.Policy}}
  sessionAffinity: None
{{- if .ExternalIPs}}
  externalIPs:
{{- range .ExternalIPs}}
  - {{.}}
{{- end}}
{{- end}}
{{- if .ExternalTrafficPolicy}}
  externalTrafficPolicy: {{.ExternalTrafficPolicy}}
{{- end}}
{{- if .HealthCheckNodePort}}
  healthCheckNodePort: {{.HealthCheckNodePort}}
{{- end}}
  selector:
    app: {{.Selector}}
  ports:
{{- $type := .Type}}
{{- range .Ports}}
  - {{if .Name}}name: {{.Name}}
    {{end}}port: {{.Port}}
    protocol: {{or .Protocol "TCP"}}
    targetPort: {{.TargetPort}}
{{- if and .NodePort (or (eq $type "NodePort") (eq $type "LoadBalancer"))}}
    nodePort: {{.NodePort}}
{{- end}}
{{- end}}
{{- if and .LoadBalancerIPs (eq .Type "LoadBalancer")}}
status:
  loadBalancer:
    ingress:
{{- range .LoadBalancerIPs}}
    - ip: {{.}}
{{- end}}
{{- end}}
{{- $svc := .}}
{{- range .Families}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {{.Slice}}
  generateName: {{$svc.Name}}-
  namespace: {{$svc.Namespace}}
  labels:
    kubernetes.io/service-name: {{$svc.Name}}
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
addressType: {{.Name}}
endpoints:
{{- range .Endpoints}}
- addresses:
  - {{.IP}}
  conditions:
    ready: {{not .NotReady}}
    serving: {{not .NotReady}}
    terminating: false
  nodeName: {{.Node}}
  targetRef:
    kind: Pod
    name: {{.Pod}}
    namespace: {{$svc.Namespace}}
{{- else}} []
{{- end}}
ports:
{{- range $svc.Ports}}
- name: "{{.Name}}"
  port: {{.EndpointPort}}
  protocol: {{or .Protocol "TCP"}}
{{- end}}
{{- end}}
`))
