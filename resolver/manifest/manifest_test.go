package manifest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/yaml"

	"github.com/kubetun/kubetun/resolver"
)

// seedYAML is the seed scenario as one would write it by hand: the Service
// and the EndpointSlice the controller would write for its two pods.
const seedYAML = `# The seed: service-test on 10.3.241.152:80 -> http (8080) on two pods.
apiVersion: v1
kind: Service
metadata:
  name: service-test
  namespace: default
spec:
  clusterIP: 10.3.241.152
  ports:
  - port: 80
    targetPort: http
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: service-test-x7k2p
  namespace: default
  labels:
    kubernetes.io/service-name: service-test
addressType: IPv4
ports:
- name: ""
  port: 8080
  protocol: TCP
endpoints:
- addresses: ["10.0.1.2"]
  conditions: {ready: true}
- addresses: ["10.0.2.2"]
  conditions: {ready: true}
`

// kubectlList is what `kubectl get svc,endpointslices -o yaml` prints for the
// seed: a List, with everything the apiserver adds (managedFields,
// resourceVersion, uid, status, ownerReferences, ...).
const kubectlList = `apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"v1","kind":"Service","metadata":{"annotations":{},"name":"service-test","namespace":"default"},"spec":{"ports":[{"port":80,"targetPort":"http"}],"selector":{"app":"service_test_pod"}}}
    creationTimestamp: "2026-11-24T10:00:00Z"
    managedFields:
    - apiVersion: v1
      fieldsType: FieldsV1
      fieldsV1:
        f:metadata:
          f:annotations:
            .: {}
            f:kubectl.kubernetes.io/last-applied-configuration: {}
        f:spec:
          f:internalTrafficPolicy: {}
          f:ports:
            .: {}
            k:{"port":80,"protocol":"TCP"}:
              .: {}
              f:port: {}
              f:protocol: {}
              f:targetPort: {}
          f:selector: {}
          f:sessionAffinity: {}
          f:type: {}
      manager: kubectl-client-side-apply
      operation: Update
      time: "2026-11-24T10:00:00Z"
    name: service-test
    namespace: default
    resourceVersion: "1234"
    uid: 0b6f7c1e-3a53-4e0b-9c2d-5f2a7d9e1a01
  spec:
    clusterIP: 10.3.241.152
    clusterIPs:
    - 10.3.241.152
    internalTrafficPolicy: Cluster
    ipFamilies:
    - IPv4
    ipFamilyPolicy: SingleStack
    ports:
    - port: 80
      protocol: TCP
      targetPort: http
    selector:
      app: service_test_pod
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints:
  - addresses:
    - 10.0.1.2
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node1
    targetRef:
      kind: Pod
      name: service-test-6ffd9ddbbf-kf4j2
      namespace: default
      uid: 5d1c2b7a-8e0f-4c1d-9a3b-2e6f7a8b9c01
    zone: zone-a
  - addresses:
    - 10.0.2.2
    conditions:
      ready: true
      serving: true
      terminating: false
    nodeName: node2
    targetRef:
      kind: Pod
      name: service-test-6ffd9ddbbf-qs2j6
      namespace: default
      uid: 5d1c2b7a-8e0f-4c1d-9a3b-2e6f7a8b9c02
    zone: zone-b
  kind: EndpointSlice
  metadata:
    annotations:
      endpoints.kubernetes.io/last-change-trigger-time: "2026-11-24T10:00:05Z"
    creationTimestamp: "2026-11-24T10:00:00Z"
    generateName: service-test-
    generation: 3
    labels:
      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
      kubernetes.io/service-name: service-test
    managedFields:
    - apiVersion: discovery.k8s.io/v1
      fieldsType: FieldsV1
      fieldsV1:
        f:addressType: {}
        f:endpoints: {}
        f:metadata:
          f:annotations:
            .: {}
            f:endpoints.kubernetes.io/last-change-trigger-time: {}
          f:generateName: {}
          f:labels:
            .: {}
            f:endpointslice.kubernetes.io/managed-by: {}
            f:kubernetes.io/service-name: {}
          f:ownerReferences:
            .: {}
            k:{"uid":"0b6f7c1e-3a53-4e0b-9c2d-5f2a7d9e1a01"}: {}
        f:ports: {}
      manager: kube-controller-manager
      operation: Update
      time: "2026-11-24T10:00:05Z"
    name: service-test-x7k2p
    namespace: default
    ownerReferences:
    - apiVersion: v1
      blockOwnerDeletion: true
      controller: true
      kind: Service
      name: service-test
      uid: 0b6f7c1e-3a53-4e0b-9c2d-5f2a7d9e1a01
    resourceVersion: "1240"
    uid: 7e2d9c4b-1f3a-4b5c-8d6e-0a1b2c3d4e5f
  ports:
  - name: ""
    port: 8080
    protocol: TCP
kind: List
metadata:
  resourceVersion: ""
`

// serviceJSON is `kubectl get svc service-test -o json`, trimmed.
const serviceJSON = `{
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "name": "service-test",
        "namespace": "default",
        "resourceVersion": "1234"
    },
    "spec": {
        "clusterIP": "10.3.241.152",
        "clusterIPs": ["10.3.241.152"],
        "ports": [{"port": 80, "protocol": "TCP", "targetPort": "http"}],
        "type": "ClusterIP"
    },
    "status": {"loadBalancer": {}}
}
`

// ids lists objects as "namespace/name".
func ids[T interface {
	GetNamespace() string
	GetName() string
}](objs []T) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.GetNamespace() + "/" + o.GetName()
	}
	return out
}

// checkWarnings checks that warnings match want one to one, in order, each
// warning containing its wanted substring.
func checkWarnings(tb testing.TB, call string, warnings, want []string) {
	tb.Helper()
	ok := len(warnings) == len(want)
	for i := 0; ok && i < len(want); i++ {
		ok = strings.Contains(warnings[i], want[i])
	}
	if !ok {
		tb.Errorf("%s warnings:\n\t%s\nwant warnings containing:\n\t%s",
			call, strings.Join(warnings, "\n\t"), strings.Join(want, "\n\t"))
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name     string
		data     string
		services []string // "namespace/name"
		slices   []string
		warnings []string // substrings, one per warning, in order
		err      []string // substrings of the error; nil: no error
	}{
		{
			name:     "multi-document YAML",
			data:     "---\n" + seedYAML + "---\n",
			services: []string{"default/service-test"},
			slices:   []string{"default/service-test-x7k2p"},
		},
		{
			name:     "JSON",
			data:     serviceJSON,
			services: []string{"default/service-test"},
		},
		{
			name:     "JSON List",
			data:     `{"apiVersion": "v1", "kind": "List", "items": [` + serviceJSON + `], "metadata": {"resourceVersion": ""}}`,
			services: []string{"default/service-test"},
		},
		{
			name:     "kubectl get svc,endpointslices -o yaml",
			data:     kubectlList,
			services: []string{"default/service-test"},
			slices:   []string{"default/service-test-x7k2p"},
		},
		{
			name: "ServiceList",
			data: "apiVersion: v1\nkind: ServiceList\nitems:\n- apiVersion: v1\n  kind: Service\n" +
				"  metadata: {name: web}\n  spec: {clusterIP: 10.3.240.10, ports: [{port: 80}]}\n",
			services: []string{"default/web"},
		},
		{
			name: "comments-only and empty documents",
			data: "# generated by hand\n---\n# nothing here yet\n---\n" + seedYAML +
				"---\n# the end\n---\n",
			services: []string{"default/service-test"},
			slices:   []string{"default/service-test-x7k2p"},
		},
		{
			name: "an empty file",
			data: "",
		},
		{
			name: "namespace defaults to default",
			data: "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.3.240.10, ports: [{port: 80}]}\n" +
				"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1}\naddressType: IPv4\n" +
				"---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: prod}\nspec: {clusterIP: 10.3.240.11}\n",
			services: []string{"default/web", "prod/web"},
			slices:   []string{"default/web-1"},
		},
		{
			name: "an unknown kind is a warning",
			data: "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: service-test}\n---\n" + seedYAML +
				"---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: service-test}\n",
			services: []string{"default/service-test"},
			slices:   []string{"default/service-test-x7k2p"},
			warnings: []string{"ignoring apps/v1 Deployment", "ignoring v1 Endpoints"},
		},
		{
			name: "an unknown field is a warning",
			data: "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n" +
				"spec:\n  clusterIP: 10.3.240.10\n  ports:\n  - port: 80\n    targetport: http\n",
			services: []string{"default/web"},
			warnings: []string{`Service web: unknown field "spec.ports[0].targetport" (ignored)`},
		},
		{
			name: "an unknown field in an EndpointSlice is a warning",
			data: "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1}\naddressType: IPv4\n" +
				"endpoints:\n- addresses: [10.0.1.2]\n  condition: {ready: true}\n",
			slices:   []string{"default/web-1"},
			warnings: []string{`EndpointSlice web-1: unknown field "endpoints[0].condition" (ignored)`},
		},
		{
			name: "a Service with the wrong apiVersion",
			data: seedYAML + "---\napiVersion: apps/v1\nkind: Service\nmetadata: {name: web}\n",
			err:  []string{"f.yaml: document 3:", `Service with apiVersion "apps/v1": want v1`},
		},
		{
			name: "an EndpointSlice with the wrong apiVersion",
			data: "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: web-1}\n",
			err:  []string{"f.yaml: document 1:", `EndpointSlice with apiVersion "discovery.k8s.io/v1beta1": want discovery.k8s.io/v1`},
		},
		{
			name: "a YAML syntax error names the file and the document",
			data: seedYAML + "---\napiVersion: v1\nkind: Service\nmetadata: {name: web\nspec: {}\n",
			err:  []string{"f.yaml: document 3:", "yaml"},
		},
		{
			name: "bad indentation",
			data: "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n spec: {}\n",
			err:  []string{"f.yaml: document 1:"},
		},
		{
			name: "no kind",
			data: "apiVersion: v1\nmetadata: {name: web}\n",
			err:  []string{"f.yaml: document 1:", "no kind"},
		},
		{
			name: "a Service without a name",
			data: "apiVersion: v1\nkind: Service\nspec: {clusterIP: 10.3.240.10}\n",
			err:  []string{"f.yaml: document 1:", "Service has no metadata.name"},
		},
		{
			name: "a wrong type",
			data: "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: eighty}]}\n",
			err:  []string{"f.yaml: document 1:"},
		},
		{
			name: "a bad List item is named",
			data: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n" +
				"- apiVersion: v1\n  kind: Service\n  metadata: {namespace: default}\n",
			err: []string{"f.yaml: document 1:", "List item 1:", "no metadata.name"},
		},
		{
			name: "a bad List item is named by its List's kind",
			data: "apiVersion: v1\nkind: ServiceList\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n" +
				"- apiVersion: v1\n  kind: Service\n  spec: {ports: [{port: eighty}]}\n",
			err: []string{"f.yaml: document 1:", "ServiceList item 1:"},
		},
		{
			name: "a List with its items indented",
			data: "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: a}\n" +
				"  -\n    apiVersion: v1\n    kind: Service\n    metadata: {name: b}\n",
			services: []string{"default/a", "default/b"},
		},
		{
			name:     "a List in flow style",
			data:     "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Service, metadata: {name: a}}]\n",
			services: []string{"default/a"},
		},
		{
			name:     "a List whose items are on the next lines but not a block sequence",
			data:     "apiVersion: v1\nkind: List\nitems:\n  [{apiVersion: v1, kind: Service, metadata: {name: a}}]\n",
			services: []string{"default/a"},
		},
		{
			name: "a List without items",
			data: "apiVersion: v1\nkind: List\nitems:\nmetadata: {}\n---\napiVersion: v1\nitems:\nkind: List\n",
		},
		{
			name: "comments, blank lines and block scalars among List items",
			data: "apiVersion: v1\nitems:\n# the web Service\n\n- apiVersion: v1\n  kind: Service\n  metadata:\n    name: a\n" +
				"    annotations:\n      note: |\n        items:\n        - not an item\n\n        ---\n# between\n  # indented\n" +
				"- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n# the end\nkind: List\n",
			services: []string{"default/a", "default/b"},
		},
		{
			name:     "CRLF line ends",
			data:     strings.ReplaceAll(kubectlList, "\n", "\r\n"),
			services: []string{"default/service-test"},
			slices:   []string{"default/service-test-x7k2p"},
		},
		{
			name: "items under a kind that is not a List, named after them",
			data: "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\nkind: ConfigMap\n" +
				"---\n" + seedYAML,
			services: []string{"default/service-test"},
			slices:   []string{"default/service-test-x7k2p"},
			warnings: []string{"ignoring v1 ConfigMap"},
		},
		{
			name:     "items in a Service, named before them",
			data:     "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nitems:\n- x\n",
			services: []string{"default/a"},
			warnings: []string{`Service a: unknown field "items" (ignored)`},
		},
		{
			name:     "items in a Service, named after them",
			data:     "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\nkind: Service\nmetadata: {name: a}\n",
			services: []string{"default/a"},
		},
		{
			name: "items and no kind",
			data: "items:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n",
			err:  []string{"f.yaml: document 1:", "no kind"},
		},
		{
			name: "items twice",
			data: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\nitems:\n- x\n",
			err:  []string{"f.yaml: document 1:", "items given twice"},
		},
		{
			name:     "items: inside a quoted value is not a List",
			data:     "apiVersion: v1\nkind: Service\nmetadata: {name: a, annotations: {note: \"x\nitems:\n- y\"}}\n",
			services: []string{"default/a"},
		},
		{
			name: "a YAML document separator with more on its line",
			data: seedYAML + "--- {}\n",
			err:  []string{"f.yaml: document 2:", "invalid YAML document separator"},
		},
		{
			name:     "JSON values one after another",
			data:     serviceJSON + `{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s"}, "addressType": "IPv4"}`,
			services: []string{"default/service-test"},
			slices:   []string{"default/s"},
		},
		{
			name:     "JSON after comments",
			data:     "# kubectl get -o json\n\n" + serviceJSON,
			services: []string{"default/service-test"},
		},
		{
			name:     "kubectl get -o json: the kind after the items",
			data:     `{"apiVersion": "v1", "items": [` + serviceJSON + `], "kind": "List", "metadata": {"resourceVersion": ""}}`,
			services: []string{"default/service-test"},
		},
		{
			name: "a JSON List without items",
			data: `{"apiVersion": "v1", "kind": "List", "items": null}`,
		},
		{
			name:     "JSON items under a kind that is not a List",
			data:     `{"apiVersion": "v1", "items": [` + serviceJSON + `], "kind": "ConfigMap"}`,
			warnings: []string{"ignoring v1 ConfigMap"},
		},
		{
			name: "a bad JSON List item is named",
			data: `{"apiVersion": "v1", "kind": "List", "items": [` + serviceJSON + `, {"kind": "Service", "apiVersion": "v1"}]}`,
			err:  []string{"f.yaml: document 1:", "List item 1:", "no metadata.name"},
		},
		{
			name: "JSON items that are not a list",
			data: `{"apiVersion": "v1", "kind": "List", "items": {}}`,
			err:  []string{"f.yaml: document 1:", "items is not a list"},
		},
		{
			name: "broken JSON",
			data: serviceJSON + `{"apiVersion": "v1",`,
			err:  []string{"f.yaml: document 2:"},
		},
		{
			name:     "an ignored kind is warned of once",
			data:     "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n",
			warnings: []string{"ignoring v1 ConfigMap"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Decode("f.yaml", []byte(tt.data))
			if tt.err != nil {
				if err == nil {
					t.Fatalf("Decode = %v services, %v slices; want an error containing %q", ids(objs.Services), ids(objs.Slices), tt.err)
				}
				for _, want := range tt.err {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("Decode error %q does not contain %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got := ids(objs.Services); !slices.Equal(got, tt.services) {
				t.Errorf("Decode services = %v, want %v", got, tt.services)
			}
			if got := ids(objs.Slices); !slices.Equal(got, tt.slices) {
				t.Errorf("Decode slices = %v, want %v", got, tt.slices)
			}
			checkWarnings(t, "Decode", objs.Warnings, tt.warnings)
		})
	}
}

// TestDecodeLimits: a file past a limit is refused with an error naming the
// file, where in it, and the limit.
func TestDecodeLimits(t *testing.T) {
	small := limits{object: 200, objects: 3, size: 400}
	svc := func(name string) string {
		return "- apiVersion: v1\n  kind: Service\n  metadata: {name: " + name + "}\n"
	}
	list := func(items ...string) string {
		return "apiVersion: v1\nkind: List\nitems:\n" + strings.Join(items, "")
	}
	jsonSvc := func(name string) string {
		return `{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "` + name + `"}}`
	}
	long := strings.Repeat("x", 200)
	tests := []struct {
		name     string
		data     string
		services int
		err      string // "" for none
	}{
		{"within every limit", list(svc("a"), svc("b"), svc("c")), 3, ""},
		{"a document too large", seedYAML[:150] + "\n---\nmetadata: {name: " + long + "}\n", 0,
			"f.yaml: document 2: larger than 200 bytes, the largest object kubetun decodes"},
		{"a List item too large", list(svc("a"), svc(long)), 0,
			"f.yaml: document 1: List item 1: larger than 200 bytes, the largest object kubetun decodes"},
		{"a line too long", "# " + strings.Repeat("x", 70<<10) + "\n", 0,
			"f.yaml: document 1: larger than 200 bytes, the largest object kubetun decodes"},
		{"the top of a List too large", "apiVersion: v1\nkind: List\nmetadata: {name: " + long + "}\nitems:\n" + svc("a"), 0,
			"f.yaml: document 1: larger than 200 bytes"},
		{"too many objects", list(svc("a"), svc("b"), svc("c"), svc("d")), 0,
			"f.yaml: document 1: List item 3: more than 3 objects in one file, the most kubetun decodes"},
		{"too many objects, in a List held whole", "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Service, metadata: {name: a}}, {kind: A}, {kind: B}, {kind: C}]\n", 0,
			"f.yaml: document 1: List item 3: more than 3 objects in one file"},
		{"too much decoded", list(svc(long[:100]), svc(long[:101]), svc(long[:102])), 0,
			"f.yaml: document 1: List item 2: more than 400 bytes of objects in one file, the most kubetun decodes"},
		{"a JSON List item too large", `{"kind": "List", "apiVersion": "v1", "items": [` + jsonSvc("a") + `, ` + jsonSvc(long) + `]}`, 0,
			"f.yaml: document 1: List item 1: larger than 200 bytes"},
		{"a JSON object too large", jsonSvc(long), 0,
			"f.yaml: document 1: larger than 200 bytes"},
		{"a JSON List within the limits", `{"kind": "List", "apiVersion": "v1", "items": [` + jsonSvc("a") + `, ` + jsonSvc("b") + `]}`, 2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, _, err := decode("f.yaml", strings.NewReader(tt.data), small, nil)
			if tt.err == "" {
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				if len(objs.Services) != tt.services {
					t.Errorf("decode services = %v, want %d", ids(objs.Services), tt.services)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("decode error = %v, want one containing %q", err, tt.err)
			}
		})
	}
}

// TestDecodeWarningsBounded: a file gives each warning once, and at most
// maxWarnings of them, each cut to maxWarningLen; the rest are counted.
func TestDecodeWarningsBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: List\nitems:\n")
	for i := range maxWarnings + 50 {
		fmt.Fprintf(&b, "- {apiVersion: v1, kind: Kind%d}\n- {apiVersion: v1, kind: Kind%d}\n", i, i)
	}
	fmt.Fprintf(&b, "---\napiVersion: v1\nkind: %s\n", strings.Repeat("K", 2*maxWarningLen))
	objs, err := Decode("f.yaml", []byte(b.String()))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if len(objs.Warnings) != maxWarnings+1 {
		t.Fatalf("Decode gave %d warnings, want %d", len(objs.Warnings), maxWarnings+1)
	}
	// 50 kinds twice each, and the long one.
	if got, want := objs.Warnings[maxWarnings], "and 101 more warnings"; got != want {
		t.Errorf("last warning %q, want %q", got, want)
	}
	if got := objs.Warnings[1]; !strings.HasPrefix(got, "ignoring v1 Kind1:") {
		t.Errorf("second warning %q, want Kind1's: each warning once", got)
	}
	long, err := Decode("f.yaml", []byte(fmt.Sprintf("apiVersion: v1\nkind: %s\n", strings.Repeat("K", 2*maxWarningLen))))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if len(long.Warnings) != 1 || len(long.Warnings[0]) > maxWarningLen+3 {
		t.Errorf("Decode warnings %q, want one of at most %d bytes", long.Warnings, maxWarningLen+3)
	}
}

// decodeWhole decodes data the way Decode did before it streamed: each
// YAML document read whole and turned into JSON whole, a List decoded
// whole. It is the reference streaming must agree with.
func decodeWhole(data []byte) (Objects, error) {
	d := newDecoder("f.yaml", fileLimits)
	r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		raw, err := r.Read()
		if errors.Is(err, io.EOF) {
			return d.done(), nil
		}
		if err != nil {
			return Objects{}, err
		}
		if len(bytes.TrimSpace(raw)) == 0 {
			continue
		}
		js, err := yaml.ToJSON(raw)
		if err != nil {
			return Objects{}, err
		}
		if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
			continue
		}
		if err := d.add(js); err != nil {
			return Objects{}, err
		}
	}
}

// checkSameObjects fails tb unless got and want hold equal Services and
// EndpointSlices, in the same order.
func checkSameObjects(tb testing.TB, data []byte, got, want Objects) {
	tb.Helper()
	if !reflect.DeepEqual(got.Services, want.Services) || !reflect.DeepEqual(got.Slices, want.Slices) {
		tb.Fatalf("Decode(%q) = services %v, slices %v; decoded whole: services %v, slices %v",
			data, ids(got.Services), ids(got.Slices), ids(want.Services), ids(want.Slices))
	}
}

// TestDecodeStreamedAsWhole: decoding a List item by item gives what
// decoding it whole gives.
func TestDecodeStreamedAsWhole(t *testing.T) {
	var snapshot bytes.Buffer
	if err := writeSnapshot(&snapshot, 20); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"kubectl List":      kubectlList,
		"kubectl snapshot":  snapshot.String(),
		"multi-document":    "---\n" + seedYAML + "---\n" + kubectlList,
		"CRLF":              strings.ReplaceAll(kubectlList, "\n", "\r\n"),
		"indented items":    "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: a}\n",
		"nested List":       "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items:\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: a}\n",
		"not a List, later": "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\nkind: Service\nmetadata: {name: a}\n",
	} {
		t.Run(name, func(t *testing.T) {
			got, err := Decode("f.yaml", []byte(data))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			want, err := decodeWhole([]byte(data))
			if err != nil {
				t.Fatalf("decodeWhole: %v", err)
			}
			checkSameObjects(t, []byte(data), got, want)
		})
	}
}

// TestDecodeSeed checks that every form of the seed gives the service table
// the seed expects: 10.3.241.152:80 served by both pods on 8080.
func TestDecodeSeed(t *testing.T) {
	forms := map[string]string{
		"by hand":      seedYAML,
		"kubectl List": kubectlList,
	}
	for name, data := range forms {
		t.Run(name, func(t *testing.T) {
			objs, err := Decode("seed.yaml", []byte(data))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			checkWarnings(t, "Decode", objs.Warnings, nil)
			if got := objs.Services[0].Spec.Ports[0].TargetPort.String(); got != "http" {
				t.Errorf("targetPort = %q, want http", got)
			}
			snap, problems := resolver.Build(objs.Services, objs.Slices, nil, resolver.Topology{})
			if len(problems) > 0 {
				t.Errorf("Build problems: %v", problems)
			}
			addr := netip.MustParseAddrPort("10.3.241.152:80")
			sp, ok := snap.Lookup(resolver.TCP, addr)
			if !ok {
				t.Fatalf("Lookup(TCP, %v) not found", addr)
			}
			var got []string
			for _, ep := range sp.Usable() {
				got = append(got, ep.Addr.String())
			}
			if want := []string{"10.0.1.2:8080", "10.0.2.2:8080"}; !slices.Equal(got, want) {
				t.Errorf("Lookup(TCP, %v).Usable() = %v, want %v", addr, got, want)
			}
		})
	}
}

// TestDecodeUnusable: manifests that decode but hold what kubetun cannot use
// are reported by resolver.Build, each with its reason.
func TestDecodeUnusable(t *testing.T) {
	tests := []struct {
		name, from, to, want string
	}{
		{"slice port 0", "  port: 8080\n", "  port: 0\n",
			`EndpointSlice default/service-test-x7k2p: port "" (TCP) is 0, not a port number (1-65535)`},
		{"slice port missing", "- name: \"\"\n  port: 8080\n  protocol: TCP\n", "- name: \"\"\n  protocol: TCP\n",
			`EndpointSlice default/service-test-x7k2p: port "" (TCP) has no number`},
		{"slice port of another name", `- name: ""`, `- name: web`,
			`EndpointSlice default/service-test-x7k2p: has no port named "" (TCP)`},
		{"Service port 0", "  - port: 80\n", "  - port: 0\n",
			"Service default/service-test: port 0 is not a port number (1-65535)"},
		{"endpoint on loopback", `["10.0.2.2"]`, `["127.0.0.1"]`,
			"Service default/service-test: endpoint 127.0.0.1 (EndpointSlice default/service-test-x7k2p) is a loopback address; refused"},
		{"endpoint on its own ClusterIP", `["10.0.2.2"]`, `["10.3.241.152"]`,
			"Service default/service-test: endpoint 10.3.241.152 (EndpointSlice default/service-test-x7k2p) is the ClusterIP of Service default/service-test"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := strings.Replace(seedYAML, tt.from, tt.to, 1)
			if data == seedYAML {
				t.Fatalf("%q is not in the seed", tt.from)
			}
			objs, err := Decode("seed.yaml", []byte(data))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			_, problems := resolver.Build(objs.Services, objs.Slices, nil, resolver.Topology{})
			if len(problems) != 1 || !strings.Contains(problems[0].String(), tt.want) {
				t.Errorf("Build problems = %v, want one containing %q", problems, tt.want)
			}
		})
	}
}

// writeFiles creates files (path relative to dir: contents) in dir.
func writeFiles(tb testing.TB, dir string, files map[string]string) {
	tb.Helper()
	for name, data := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"b.yml":                   "",
		"a.yaml":                  "",
		"c.json":                  "{}",
		"Z.YAML":                  "",
		"notes.txt":               "",
		"README.md":               "",
		"yaml":                    "",
		".hidden.yaml":            "",
		"..2026_11_24/x.yaml":     "", // a ConfigMap volume's data directory
		"nested/d.yaml":           "", // not read: Files does not recurse
		"empty/notes.txt":         "",
		"withdir/dir.yaml/e.yaml": "", // a directory named like a manifest
	})
	// A ConfigMap volume: x.yaml -> ..data/x.yaml, ..data -> ..2026_11_24.
	if err := os.Symlink("..2026_11_24", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/x.yaml", filepath.Join(dir, "x.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("gone.yaml", filepath.Join(dir, "dangling.yaml")); err != nil {
		t.Fatal(err)
	}
	single := filepath.Join(dir, "notes.txt")

	tests := []struct {
		name string
		path string
		want []string // relative to dir
		err  bool
	}{
		{name: "a directory", path: dir, want: []string{"Z.YAML", "a.yaml", "b.yml", "c.json", "x.yaml"}},
		{name: "a file, whatever its name", path: single, want: []string{"notes.txt"}},
		{name: "a directory without manifests", path: filepath.Join(dir, "empty"), want: nil},
		{name: "a missing path", path: filepath.Join(dir, "missing"), err: true},
		{name: "a directory named like a manifest", path: filepath.Join(dir, "withdir"), err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Files(tt.path)
			if tt.err {
				if err == nil {
					t.Fatalf("Files(%q) = %v, want an error", tt.path, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Files(%q): %v", tt.path, err)
			}
			want := make([]string, len(tt.want))
			for i, f := range tt.want {
				want[i] = filepath.Join(dir, f)
			}
			if !slices.Equal(got, want) {
				t.Errorf("Files(%q) = %v, want %v", tt.path, got, want)
			}
		})
	}
}

func TestLoadDuplicate(t *testing.T) {
	dir := t.TempDir()
	svc := func(ip string) string {
		return "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: " + ip + ", ports: [{port: 80}]}\n"
	}
	writeFiles(t, dir, map[string]string{
		"a.yaml": svc("10.3.240.10") + "---\napiVersion: v1\nkind: Service\nmetadata: {name: other}\nspec: {clusterIP: 10.3.240.12}\n",
		"b.yaml": svc("10.3.240.11") + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\n",
	})
	objs, err := Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got, want := ids(objs.Services), []string{"default/web", "default/other"}; !slices.Equal(got, want) {
		t.Fatalf("Load services = %v, want %v", got, want)
	}
	if got := objs.Services[0].Spec.ClusterIP; got != "10.3.240.11" {
		t.Errorf("Service default/web clusterIP = %s, want 10.3.240.11 (the later definition)", got)
	}
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	checkWarnings(t, "Load", objs.Warnings, []string{
		b + ": ignoring v1 ConfigMap",
		b + ": Service default/web is also defined in " + a + "; using the one in " + b,
	})
}

func TestNewSource(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"good/seed.yaml":   seedYAML,
		"broken/seed.yaml": seedYAML,
		"broken/web.yaml":  "apiVersion: v1\nkind: Service\nmetadata: {name: web\n",
		"empty/notes.txt":  "",
	})
	tests := []struct {
		name     string
		path     string
		services int
		warnings []string
		err      []string
	}{
		{name: "a directory", path: filepath.Join(dir, "good"), services: 1},
		{name: "a file", path: filepath.Join(dir, "good", "seed.yaml"), services: 1},
		{name: "no manifest yet", path: filepath.Join(dir, "empty"), warnings: []string{"no .yaml, .yml or .json file"}},
		{name: "a missing path", path: filepath.Join(dir, "missing"), err: []string{"reading manifests", filepath.Join(dir, "missing")}},
		{name: "a broken file", path: filepath.Join(dir, "broken"), err: []string{filepath.Join(dir, "broken", "web.yaml") + ": document 1:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, objs, err := NewSource(tt.path, discardLogger())
			if tt.err != nil {
				if err == nil {
					t.Fatalf("NewSource(%q) succeeded, want an error containing %q", tt.path, tt.err)
				}
				if src != nil {
					t.Errorf("NewSource(%q) = %v and an error, want a nil Source", tt.path, src)
				}
				for _, want := range tt.err {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("NewSource(%q) error %q does not contain %q", tt.path, err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("NewSource(%q): %v", tt.path, err)
			}
			if len(objs.Services) != tt.services {
				t.Errorf("NewSource(%q) services = %v, want %d", tt.path, ids(objs.Services), tt.services)
			}
			checkWarnings(t, "NewSource", objs.Warnings, tt.warnings)
		})
	}
}
