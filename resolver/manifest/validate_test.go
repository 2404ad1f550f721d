package manifest

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestInvalid: what makes a Service or an EndpointSlice invalid, each with
// its reason; what is well-formed but unusable in context is not.
func TestInvalid(t *testing.T) {
	tests := []struct {
		name, from, to string
		want           string // "" for valid
	}{
		{"the seed", "", "", ""},
		{"clusterIP not an IP address", "clusterIP: 10.3.241.152", "clusterIP: 10.3.241.999",
			`Service default/service-test: clusterIP "10.3.241.999" is not an IP address`},
		{"clusterIPs not matching clusterIP", "clusterIP: 10.3.241.152", "clusterIP: 10.3.241.153\n  clusterIPs: [10.3.241.152]",
			"Service default/service-test: clusterIPs[0] 10.3.241.152 is not its clusterIP 10.3.241.153"},
		{"clusterIPs not an IP address", "clusterIP: 10.3.241.152", "clusterIP: 10.3.241.152\n  clusterIPs: [10.3.241.152, x]",
			`Service default/service-test: clusterIPs[1] "x" is not an IP address`},
		{"headless", "clusterIP: 10.3.241.152", "clusterIP: None\n  clusterIPs: [None]", ""},
		{"no clusterIP", "clusterIP: 10.3.241.152", "type: ClusterIP", ""},
		{"ExternalName", "clusterIP: 10.3.241.152", "type: ExternalName\n  externalName: example.com", ""},
		{"Service port 0", "  - port: 80\n", "  - port: 0\n",
			"Service default/service-test: ports[0]: port 0 is not a port number (1-65535)"},
		{"Service port 65536", "  - port: 80\n", "  - port: 65536\n",
			"Service default/service-test: ports[0]: port 65536 is not a port number (1-65535)"},
		{"Service nodePort out of range", "  - port: 80\n", "  - port: 80\n    nodePort: 70000\n",
			"Service default/service-test: ports[0]: nodePort 70000 is not a port number (1-65535)"},
		{"Service protocol unknown", "  - port: 80\n", "  - port: 80\n    protocol: QUIC\n",
			`Service default/service-test: ports[0]: protocol "QUIC" is not TCP, UDP or SCTP`},
		{"Service on SCTP", "  - port: 80\n", "  - port: 80\n    protocol: SCTP\n", ""},
		{"externalIP not an IP address", "  clusterIP: 10.3.241.152\n", "  clusterIP: 10.3.241.152\n  externalIPs: [203.0.113.300]\n",
			`Service default/service-test: externalIPs[0] "203.0.113.300" is not an IP address`},
		{"slice port 0", "  port: 8080\n", "  port: 0\n",
			"EndpointSlice default/service-test-x7k2p: ports[0]: port 0 is not a port number (1-65535)"},
		{"slice port without a number", "  port: 8080\n", "",
			"EndpointSlice default/service-test-x7k2p: ports[0] has no port number"},
		{"slice protocol unknown", "  protocol: TCP\n", "  protocol: tcp\n",
			`EndpointSlice default/service-test-x7k2p: ports[0]: protocol "tcp" is not TCP, UDP or SCTP`},
		{"slice port of another name", `- name: ""`, `- name: web`, ""},
		{"address type unknown", "addressType: IPv4", "addressType: IPv5",
			`EndpointSlice default/service-test-x7k2p: addressType "IPv5" is not IPv4, IPv6 or FQDN`},
		{"address not an IP address", `["10.0.2.2"]`, `["10.0.2.300"]`,
			`EndpointSlice default/service-test-x7k2p: endpoints[1].addresses[0] "10.0.2.300" is not an IPv4 address`},
		{"address of the other family", `["10.0.2.2"]`, `["fd00::2"]`,
			`EndpointSlice default/service-test-x7k2p: endpoints[1].addresses[0] "fd00::2" is not an IPv4 address`},
		{"endpoint without an address", `- addresses: ["10.0.2.2"]`, `- addresses: []`,
			"EndpointSlice default/service-test-x7k2p: endpoints[1] has no address"},
		{"endpoint on loopback", `["10.0.2.2"]`, `["127.0.0.1"]`, ""},
		{"FQDN slice", "addressType: IPv4", "addressType: FQDN", ""},
		{"slice without the Service label", "    kubernetes.io/service-name: service-test\n", "    app: web\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := strings.Replace(seedYAML, tt.from, tt.to, 1)
			if tt.from != "" && data == seedYAML {
				t.Fatalf("%q is not in the seed", tt.from)
			}
			objs, err := Decode("seed.yaml", []byte(data))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			var got []string
			for o, why := range invalidObjects(objs) {
				got = append(got, describeInvalid(objs, o)+": "+why)
			}
			switch {
			case tt.want == "" && len(got) > 0:
				t.Errorf("invalid: %q, want none", got)
			case tt.want != "" && (len(got) != 1 || got[0] != tt.want):
				t.Errorf("invalid: %q, want %q", got, tt.want)
			}
		})
	}
}

// describeInvalid names o, an object of objs, as "Kind namespace/name".
func describeInvalid(objs Objects, o any) string {
	for _, svc := range objs.Services {
		if any(svc) == o {
			return "Service " + svc.Namespace + "/" + svc.Name
		}
	}
	for _, es := range objs.Slices {
		if any(es) == o {
			return "EndpointSlice " + es.Namespace + "/" + es.Name
		}
	}
	return "?"
}

// next waits for Run's next apply.
func (st *sourceTest) next() Objects {
	st.tb.Helper()
	select {
	case objs := <-st.applied:
		return objs
	case <-time.After(wait):
		st.tb.Fatalf("nothing applied within %v", wait)
	}
	return Objects{}
}

// slicePort0 is sliceYAML with its port 0.
func slicePort0(tb testing.TB, name string, addrs ...string) string {
	tb.Helper()
	s := strings.ReplaceAll(sliceYAML(addrs...), "service-test-x7k2p", name)
	bad := strings.Replace(s, "port: 8080", "port: 0", 1)
	if bad == s {
		tb.Fatalf("no port 8080 in %q", s)
	}
	return bad
}

// checkKept checks that objs holds slice name with the endpoints want and
// port 8080, and the warnings want: each once, in order.
func checkKept(tb testing.TB, objs Objects, name, want string, warnings ...string) {
	tb.Helper()
	var addrs []string
	found := false
	for _, es := range objs.Slices {
		if es.Name != name {
			continue
		}
		found = true
		if p := es.Ports[0].Port; p == nil || *p != 8080 {
			tb.Errorf("EndpointSlice %s port %v, want its last valid version's 8080", name, p)
		}
		for _, ep := range es.Endpoints {
			addrs = append(addrs, ep.Addresses[0])
		}
	}
	if got := strings.Join(addrs, " "); !found || got != want {
		tb.Errorf("EndpointSlice %s endpoints %q (found: %v), want %q", name, got, found, want)
	}
	checkWarnings(tb, "apply", objs.Warnings, warnings)
}

// TestSourceKeepsLastValid: through Run's polls, an object whose new
// version is invalid keeps its last valid version, with a warning naming
// the file, the object and the reason; per object, not per file.
func TestSourceKeepsLastValid(t *testing.T) {
	const seedSlice = "service-test-x7k2p"
	keeping := func(file, object, reason string) string {
		return file + ": " + object + ": " + reason + "; keeping its last valid version"
	}
	port0 := "ports[0]: port 0 is not a port number (1-65535)"

	t.Run("slice_edited_to_port_0", func(t *testing.T) {
		st := startSource(t)
		replaceFile(t, st.slice, slicePort0(t, seedSlice, "10.0.1.2", "10.0.3.2"))
		checkKept(t, st.next(), seedSlice, "10.0.1.2 10.0.2.2",
			keeping(st.slice, "EndpointSlice default/"+seedSlice, port0))
		st.settle(0)

		// Fixed: the new version.
		replaceFile(t, st.slice, sliceYAML("10.0.1.2", "10.0.3.2"))
		checkKept(t, st.next(), seedSlice, "10.0.1.2 10.0.3.2")

		// Broken again: the last valid version is now that one.
		replaceFile(t, st.slice, slicePort0(t, seedSlice, "10.0.9.9"))
		checkKept(t, st.next(), seedSlice, "10.0.1.2 10.0.3.2",
			keeping(st.slice, "EndpointSlice default/"+seedSlice, port0))
	})

	t.Run("service_with_a_bad_clusterIP", func(t *testing.T) {
		st := startSource(t)
		service := filepath.Join(filepath.Dir(st.slice), "service.yaml")
		bad := strings.Replace(strings.SplitN(seedYAML, "---\n", 2)[0], "clusterIP: 10.3.241.152", "clusterIP: 10.3.241.999", 1)
		replaceFile(t, service, bad)
		objs := st.next()
		if len(objs.Services) != 1 || objs.Services[0].Spec.ClusterIP != "10.3.241.152" {
			t.Errorf("applied Services %v, want service-test on its last valid clusterIP 10.3.241.152", ids(objs.Services))
		}
		checkKept(t, objs, seedSlice, "10.0.1.2 10.0.2.2",
			keeping(service, "Service default/service-test", `clusterIP "10.3.241.999" is not an IP address`))
	})

	t.Run("per_object_not_per_file", func(t *testing.T) {
		st := startSource(t)
		both := filepath.Join(filepath.Dir(st.slice), "both.yaml")
		replaceFile(t, both, strings.ReplaceAll(sliceYAML("10.0.4.2"), seedSlice, "a")+"---\n"+
			strings.ReplaceAll(sliceYAML("10.0.5.2"), seedSlice, "b"))
		checkKept(t, st.next(), "b", "10.0.5.2")

		// a turns invalid, b changes: b's change is applied, a keeps its
		// last valid version.
		replaceFile(t, both, slicePort0(t, "a", "10.0.4.3")+"---\n"+
			strings.ReplaceAll(sliceYAML("10.0.5.3"), seedSlice, "b"))
		objs := st.next()
		checkKept(t, objs, "a", "10.0.4.2", keeping(both, "EndpointSlice default/a", port0))
		checkKept(t, objs, "b", "10.0.5.3", keeping(both, "EndpointSlice default/a", port0))
		checkKept(t, objs, seedSlice, "10.0.1.2 10.0.2.2", keeping(both, "EndpointSlice default/a", port0))
	})

	t.Run("kept_across_other_changes", func(t *testing.T) {
		st := startSource(t)
		replaceFile(t, st.slice, slicePort0(t, seedSlice, "10.0.1.2"))
		warning := keeping(st.slice, "EndpointSlice default/"+seedSlice, port0)
		checkKept(t, st.next(), seedSlice, "10.0.1.2 10.0.2.2", warning)

		other := filepath.Join(filepath.Dir(st.slice), "other.yaml")
		replaceFile(t, other, strings.ReplaceAll(sliceYAML("10.0.6.2"), seedSlice, "other"))
		objs := st.next()
		checkKept(t, objs, seedSlice, "10.0.1.2 10.0.2.2", warning)
		checkKept(t, objs, "other", "10.0.6.2", warning)
	})

	t.Run("removed_object_is_removed", func(t *testing.T) {
		st := startSource(t)
		replaceFile(t, st.slice, slicePort0(t, seedSlice, "10.0.1.2"))
		st.next()
		replaceFile(t, st.slice, "# nothing here now\n")
		objs := st.next()
		if len(objs.Slices) != 0 || len(objs.Warnings) != 0 {
			t.Errorf("applied slices %v, warnings %q; want none: the object left the file", ids(objs.Slices), objs.Warnings)
		}
		// Back, invalid: new again, so passed on as it is.
		replaceFile(t, st.slice, slicePort0(t, seedSlice, "10.0.1.2"))
		objs = st.next()
		if len(objs.Slices) != 1 || *objs.Slices[0].Ports[0].Port != 0 || len(objs.Warnings) != 0 {
			t.Errorf("applied slices %v, warnings %q; want the new invalid slice as it is", ids(objs.Slices), objs.Warnings)
		}
	})

	t.Run("new_invalid_object_is_passed_on", func(t *testing.T) {
		st := startSource(t)
		added := filepath.Join(filepath.Dir(st.slice), "added.yaml")
		replaceFile(t, added, slicePort0(t, "added", "10.0.7.2"))
		objs := st.next()
		var got []string
		for _, es := range objs.Slices {
			got = append(got, es.Name+":"+fmt.Sprint(*es.Ports[0].Port))
		}
		if want := []string{"added:0", seedSlice + ":8080"}; !slices.Equal(got, want) {
			t.Errorf("applied slices %v, want %v: a new invalid object as it is, for the table to report", got, want)
		}
		checkWarnings(t, "apply", objs.Warnings, nil)
	})
}
