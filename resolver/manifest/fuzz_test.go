package manifest

import (
	"fmt"
	"testing"
	"time"

	"github.com/kubetun/kubetun/resolver"
)

// decodeBound is far more than any Decode of a fuzz input should take.
const decodeBound = 10 * time.Second

// FuzzDecode feeds the manifest decoder arbitrary file contents: YAML or
// JSON, one or many documents, Lists. Nothing may panic; every object it
// returns has a name and a namespace, it is what decoding each document
// whole gives (when that succeeds too: Lists are streamed item by item), and
// the service table builds from them (whatever they say) without panicking.
// `go test` runs the seed corpus; `make fuzz` fuzzes it.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		seedYAML,
		kubectlList,
		serviceJSON,
		"---\n" + seedYAML + "---\n",
		`{"apiVersion": "v1", "kind": "List", "items": [` + serviceJSON + `], "metadata": {"resourceVersion": ""}}`,
		"apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n  items: []\n",
		"# only a comment\n",
		"apiVersion: v1\nitems:\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: a}\n  # c\n\n  -\n    kind: B\nkind: List\n",
		`{"apiVersion": "v1", "items": [` + serviceJSON + `, {"kind": "X"}], "kind": "List"}`,
		"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\n",
		"apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.3.240.12, ports: [{port: 80, targetport: 8080}]}\n",
		"apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\nspec: {type: ExternalName, externalName: example.com}\n",
		"apiVersion: v1\nkind: Service\nmetadata: {name: h}\nspec: {clusterIP: None, clusterIPs: [None], ipFamilies: [IPv6]}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// A hung decode never returns to fail the test: the panic ends
		// the fuzzing process, which makes the fuzzer keep the input.
		slow := time.AfterFunc(decodeBound, func() { panic(fmt.Sprintf("Decode(%q): still running after %v", data, decodeBound)) })
		defer slow.Stop()
		objs, err := Decode("fuzz.yaml", data)
		if err != nil {
			return
		}
		if whole, err := decodeWhole(data); err == nil {
			checkSameObjects(t, data, objs, whole)
		}
		for _, svc := range objs.Services {
			if svc.Name == "" || svc.Namespace == "" {
				t.Fatalf("Decode(%q): a Service named %q in namespace %q", data, svc.Name, svc.Namespace)
			}
		}
		for _, es := range objs.Slices {
			if es.Name == "" || es.Namespace == "" {
				t.Fatalf("Decode(%q): an EndpointSlice named %q in namespace %q", data, es.Name, es.Namespace)
			}
		}
		resolver.Build(objs.Services, objs.Slices, nil, resolver.Topology{})
	})
}
