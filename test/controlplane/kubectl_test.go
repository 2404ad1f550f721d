package controlplane

import (
	"slices"
	"testing"
)

func TestDescribedEndpoints(t *testing.T) {
	for _, tc := range []struct {
		name, describe string
		want           []string
	}{
		{"sorted", "Port:  <unset>  80/TCP\nEndpoints:                10.0.2.2:8080,10.0.1.2:8080\nSession Affinity:  None\n", []string{"10.0.1.2:8080", "10.0.2.2:8080"}},
		{"none", "Endpoints:  <none>\n", nil},
		{"empty", "Endpoints:\n", nil},
		{"missing", "Name: x\n", nil},
	} {
		if got := DescribedEndpoints(tc.describe); !slices.Equal(got, tc.want) {
			t.Errorf("%s: DescribedEndpoints = %q, want %q", tc.name, got, tc.want)
		}
	}
}
