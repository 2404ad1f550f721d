package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestRowRatios(t *testing.T) {
	r := row{name: "rate"}
	r.results[pathDirect] = result{value: 10, unit: "k/s"}
	r.results[pathKubetun] = result{value: 5, unit: "k/s"}
	r.results[pathIptables] = result{value: 8, unit: "k/s"}
	for _, tt := range []struct {
		base int
		want float64
	}{{pathDirect, 0.5}, {pathIptables, 0.625}, {pathNftables, 0}} {
		if got := r.ratioTo(tt.base); got != tt.want {
			t.Errorf("ratioTo(%s) = %v, want %v", pathNames[tt.base], got, tt.want)
		}
	}
	j := r.json()
	if j.Unit != "k/s" || j.Values["nftables"] != 0 || len(j.Values) != 3 {
		t.Errorf("json() = %+v, want 3 values in k/s, none for nftables", j)
	}
	if got := j.Ratios["kubetun/iptables"]; got != 0.625 {
		t.Errorf(`json().Ratios["kubetun/iptables"] = %v, want 0.625`, got)
	}
	if _, ok := j.Ratios["kubetun/nftables"]; ok {
		t.Errorf("json().Ratios has kubetun/nftables without an nftables value: %v", j.Ratios)
	}
}

func TestPrintTable(t *testing.T) {
	r := row{name: "latency", lowerBetter: true, failures: []string{"nftables to x: timeout"}}
	r.results[pathDirect] = result{value: 20, unit: "µs", detail: "100 round trips"}
	r.results[pathKubetun] = result{value: 60, unit: "µs"}
	var b bytes.Buffer
	printTable(&b, []row{r})
	out := b.String()
	for _, want := range []string{"latency ↓", "3.00", "failed:   nftables to x: timeout", "direct:   100 round trips"} {
		if !strings.Contains(out, want) {
			t.Errorf("printTable: no %q in\n%s", want, out)
		}
	}
}

func TestParseSizes(t *testing.T) {
	got, err := parseSizes("--x", "1000, 30000,")
	if err != nil || !slices.Equal(got, []int{1000, 30000}) {
		t.Errorf("parseSizes = %v, %v; want [1000 30000]", got, err)
	}
	if _, err := parseSizes("--x", "1k"); err == nil {
		t.Errorf("parseSizes(1k): no error")
	}
}

func TestParseList(t *testing.T) {
	known := keys(kubeProxyModes)
	if got, err := parseList("--kube-proxy", "nftables", known); err != nil || !got["nftables"] || got["iptables"] {
		t.Errorf("parseList(nftables) = %v, %v", got, err)
	}
	if got, err := parseList("--kube-proxy", "", known); err != nil || len(got) != 0 {
		t.Errorf(`parseList("") = %v, %v; want none`, got, err)
	}
	if _, err := parseList("--kube-proxy", "ipvs", known); err == nil {
		t.Errorf("parseList(ipvs): no error")
	}
}

func TestScaleIP(t *testing.T) {
	for i, want := range map[int]string{0: "10.100.0.1", 254: "10.100.0.255", 255: "10.100.1.0", 59999: "10.100.234.96"} {
		if got := scaleIP(i).String(); got != want {
			t.Errorf("scaleIP(%d) = %s, want %s", i, got, want)
		}
		if !scaleCIDR.Contains(scaleIP(i)) || scaleIP(i) == probeIP {
			t.Errorf("scaleIP(%d) = %s: outside %s or the probe's address", i, scaleIP(i), scaleCIDR)
		}
	}
}

func TestGenObjects(t *testing.T) {
	svcs, eps := genObjects(300, 3)
	if len(svcs) != 300 || len(eps) != 300 {
		t.Fatalf("genObjects(300, 3): %d Services, %d slices", len(svcs), len(eps))
	}
	seen := map[string]bool{}
	for i, es := range eps {
		if es.Labels["kubernetes.io/service-name"] != svcs[i].Name || len(es.Endpoints) != 3 {
			t.Fatalf("slice %d: %+v does not belong to %s with 3 endpoints", i, es.ObjectMeta, svcs[i].Name)
		}
		for _, ep := range es.Endpoints {
			if seen[ep.Addresses[0]] {
				t.Fatalf("endpoint %s twice", ep.Addresses[0])
			}
			seen[ep.Addresses[0]] = true
		}
	}
}
