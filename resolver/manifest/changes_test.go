package manifest

import (
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kubetun/kubetun/resolver"
)

// serviceYAML is a Service with one port on clusterIP.
func serviceYAML(name, clusterIP string) string {
	return "apiVersion: v1\nkind: Service\nmetadata: {name: " + name + ", namespace: default}\n" +
		"spec: {clusterIP: " + clusterIP + ", ports: [{port: 80, targetPort: 8080}]}\n"
}

// pollChanges has s look at its files again, as Run does on a tick, and
// returns the objects it would apply.
func pollChanges(t *testing.T, s *Source) Objects {
	t.Helper()
	_, files, err := s.poll(time.Now().Add(time.Hour)) // well after the writes: metadata trusted
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	return s.objects(files)
}

// TestSourceChanges edits a manifest file and checks the change set each
// edit gives: only the keys whose objects changed, none for an edit that
// changes nothing the table reads, and a table updated with it that is the
// table built from nothing. One edit renames a Service onto another's
// ClusterIP: the older one keeps it.
func TestSourceChanges(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "services.yaml")
	write := func(docs ...string) {
		t.Helper()
		data := ""
		for _, d := range docs {
			data += "---\n" + d
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(path, time.Now().Add(-time.Minute), time.Now().Add(-time.Minute)) // a new mtime for the poll
	}
	a, b := serviceYAML("a", "10.96.0.10"), serviceYAML("b", "10.96.0.11")
	write(a, b)
	s, objs, err := NewSource(path, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	if ch := objs.Changes; ch == nil || !ch.All || len(ch.Services) != 2 {
		t.Fatalf("first change set = %+v, want All with 2 Services", ch)
	}
	snap, _ := resolver.Update(nil, objs.Changes, resolver.Topology{})

	steps := []struct {
		name    string
		docs    []string
		changed []string // the Service keys changed
		serves  map[string]string
		lost    string // a Service reported for a ClusterIP port an older one holds
	}{
		{
			name:    "b renamed to c, onto a's ClusterIP",
			docs:    []string{a, serviceYAML("c", "10.96.0.10")},
			changed: []string{"default/b", "default/c"},
			serves:  map[string]string{"10.96.0.10:80": "default/a", "10.96.0.11:80": ""},
			lost:    "Service default/c",
		},
		{
			name:   "a comment and the objects reordered",
			docs:   []string{"# reordered\n" + serviceYAML("c", "10.96.0.10"), a},
			serves: map[string]string{"10.96.0.10:80": "default/a"},
			lost:   "Service default/c",
		},
		{
			name:    "a deleted: c gets the ClusterIP",
			docs:    []string{serviceYAML("c", "10.96.0.10")},
			changed: []string{"default/a"},
			serves:  map[string]string{"10.96.0.10:80": "default/c"},
		},
	}
	for _, st := range steps {
		write(st.docs...)
		objs := pollChanges(t, s)
		ch := objs.Changes
		if ch == nil || ch.All {
			t.Fatalf("%s: change set %+v, want one of changes only", st.name, ch)
		}
		if got := slices.Sorted(maps.Keys(ch.Services)); !slices.Equal(got, st.changed) {
			t.Errorf("%s: changed Services %v, want %v", st.name, got, st.changed)
		}
		var problems []resolver.Problem
		snap, problems = resolver.Update(snap, ch, resolver.Topology{})
		scratch, want := resolver.Build(objs.Services, objs.Slices, nil, resolver.Topology{})
		if !reflect.DeepEqual(problems, want) {
			t.Errorf("%s: problems %v, from scratch %v", st.name, problems, want)
		}
		lost := ""
		for _, p := range problems {
			if strings.Contains(p.Reason, "already served by Service default/a") {
				lost = p.Object
			}
		}
		if lost != st.lost {
			t.Errorf("%s: %q lost a port to default/a, want %q; problems %v", st.name, lost, st.lost, problems)
		}
		for addr, svc := range st.serves {
			ap := netip.MustParseAddrPort(addr)
			got, _ := snap.Lookup(resolver.TCP, ap)
			fresh, _ := scratch.Lookup(resolver.TCP, ap)
			if name(got) != svc || name(fresh) != svc {
				t.Errorf("%s: %s served by %q (from scratch %q), want %q", st.name, addr, name(got), name(fresh), svc)
			}
		}
	}
}

func name(sp *resolver.ServicePort) string {
	if sp == nil {
		return ""
	}
	return sp.Service
}
