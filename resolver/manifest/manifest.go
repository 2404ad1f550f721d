// Package manifest is kubetun's static service source: Services and
// EndpointSlices read from YAML or JSON files, exactly as `kubectl get -o yaml`
// prints them, and watched for changes. It is for sidecars and hosts that
// have no access to the Kubernetes API. A Source hands on, with each new
// set of objects, what changed in it object by object (Objects.Changes, as
// a resolver.ChangeTracker records it), for resolver.Update.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"

	"github.com/kubetun/kubetun/resolver"
)

// Objects is what a set of manifests holds for kubetun.
type Objects struct {
	Services []*corev1.Service
	Slices   []*discoveryv1.EndpointSlice

	// Warnings are things the user should hear about that did not stop the
	// load: ignored kinds, unknown fields, objects defined twice.
	Warnings []string

	// Changes, from a Source, is what changed since the Objects it handed
	// out before, key by key (the first: All, with every object); never
	// nil there. Load and Decode leave it nil.
	Changes *resolver.Changes
}

// extensions lists the file names a directory is read for, as kubectl
// apply -f DIR does.
var extensions = []string{".yaml", ".yml", ".json"}

// Files returns the manifest files at path: path itself if it is a file, or
// the .yaml, .yml and .json files directly in it if it is a directory
// (sorted; hidden entries skipped, so a ConfigMap volume's ..data links are
// not read twice; dangling links skipped, as a file removed). A directory
// named like a manifest is an error: it is most likely a file that became
// one, and its Services would vanish without a word.
func Files(path string) ([]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !slices.Contains(extensions, strings.ToLower(filepath.Ext(name))) {
			continue
		}
		full := filepath.Join(path, name)
		fi, err := os.Stat(full)
		if errors.Is(err, fs.ErrNotExist) {
			continue // a dangling link, or removed since ReadDir
		}
		if err != nil {
			return nil, err
		}
		if fi.IsDir() {
			return nil, fmt.Errorf("%s is a directory, not a manifest file", full)
		}
		files = append(files, full)
	}
	return files, nil
}

// Decode reads every Service and EndpointSlice in one file's contents.
// Multi-document YAML, JSON, and List kinds are accepted; other kinds are
// skipped with a warning. name is used in errors only.
func Decode(name string, data []byte) (Objects, error) {
	objs, _, err := decode(name, bytes.NewReader(data), fileLimits, nil)
	return objs, err
}

// decode is Decode reading the contents from r, an object at a time, within
// lim (fileLimits but in tests). If reuse is not nil, objects decoded from
// the same text by the file's last decode are taken from it, and the objects
// of this decode are returned in the same form, for the next (see
// decoder.reusing).
func decode(name string, r io.Reader, lim limits, reuse map[textKey]any) (Objects, map[textKey]any, error) {
	d := newDecoder(name, lim)
	if reuse != nil {
		d.reuse, d.cache = reuse, make(map[textKey]any, len(reuse))
	}
	if err := d.stream(r); err != nil {
		return Objects{}, nil, err
	}
	return d.done(), d.cache, nil
}

// add decodes one JSON object (or List of them) into d.objs.
func (d *decoder) add(js []byte) error {
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return fmt.Errorf("not a Kubernetes object: %w", err)
	}
	if !strings.HasSuffix(tm.Kind, "List") {
		if err := d.countObject(); err != nil {
			return err
		}
	}
	switch {
	case tm.Kind == "":
		return errors.New("no kind: want a v1 Service, a discovery.k8s.io/v1 EndpointSlice or a List of them")
	case tm.APIVersion == "v1" && tm.Kind == "Service":
		svc := new(corev1.Service)
		if err := d.unmarshal(js, svc); err != nil {
			return err
		}
		if svc.Name == "" {
			return errors.New("Service has no metadata.name")
		}
		if svc.Namespace == "" {
			svc.Namespace = metav1.NamespaceDefault
		}
		d.objs.Services = append(d.objs.Services, svc)
	case tm.APIVersion == "discovery.k8s.io/v1" && tm.Kind == "EndpointSlice":
		es := new(discoveryv1.EndpointSlice)
		if err := d.unmarshal(js, es); err != nil {
			return err
		}
		if es.Name == "" {
			return errors.New("EndpointSlice has no metadata.name")
		}
		if es.Namespace == "" {
			es.Namespace = metav1.NamespaceDefault
		}
		d.objs.Slices = append(d.objs.Slices, es)
	case strings.HasSuffix(tm.Kind, "List"):
		// A List held whole: a small one, or one inside a List.
		var list struct {
			Items []json.RawMessage `json:"items"`
		}
		if err := json.Unmarshal(js, &list); err != nil {
			return fmt.Errorf("%s: %w", tm.Kind, err)
		}
		for i, item := range list.Items {
			if err := d.add(item); err != nil {
				return fmt.Errorf("%s item %d: %w", tm.Kind, i, err)
			}
		}
	case tm.Kind == "Service" || tm.Kind == "EndpointSlice":
		return fmt.Errorf("%s with apiVersion %q: want %s", tm.Kind, tm.APIVersion,
			map[string]string{"Service": "v1", "EndpointSlice": "discovery.k8s.io/v1"}[tm.Kind])
	default:
		d.warn(fmt.Sprintf("ignoring %s %s: kubetun reads only Services and EndpointSlices", tm.APIVersion, tm.Kind))
	}
	return nil
}

// unmarshal decodes js into obj the way the apiserver does: field names are
// case-sensitive (encoding/json would take "targetport" for "targetPort").
// Fields kubetun does not know are allowed (a newer Kubernetes may add some)
// but reported, since they are usually a typo such as "targetport".
func (d *decoder) unmarshal(js []byte, obj any) error {
	strict, err := kjson.UnmarshalStrict(js, obj, kjson.DisallowUnknownFields, kjson.DisallowDuplicateFields)
	if err != nil {
		return err
	}
	for _, e := range strict {
		d.warn(fmt.Sprintf("%s: %v (ignored)", describe(obj), e))
	}
	return nil
}

func describe(obj any) string {
	switch o := obj.(type) {
	case *corev1.Service:
		return "Service " + o.Name
	case *discoveryv1.EndpointSlice:
		return "EndpointSlice " + o.Name
	}
	return fmt.Sprintf("%T", obj)
}

// Load reads every manifest at path (a file or a directory).
func Load(path string) (Objects, error) {
	files, err := Files(path)
	if err != nil {
		return Objects{}, err
	}
	decoded := make(map[string]Objects, len(files))
	for _, f := range files {
		objs, _, _, bad, err := decodeFile(f, nil)
		if err == nil {
			err = bad
		}
		if err != nil {
			return Objects{}, err
		}
		decoded[f] = objs
	}
	return merge(files, decoded), nil
}

// merge merges the objects of files, in order. An object defined twice (same
// kind, namespace and name) keeps its last definition, with a warning. The
// Objects in decoded are not changed.
func merge(files []string, decoded map[string]Objects) Objects {
	var all Objects
	seen := make(map[string]string) // "Service ns/name" -> file
	for _, f := range files {
		objs := decoded[f]
		for _, w := range objs.Warnings {
			all.Warnings = append(all.Warnings, f+": "+w)
		}
		for _, svc := range objs.Services {
			all.Services = replaceOrAppend(all.Services, svc, "Service", seen, f, &all.Warnings,
				func(o *corev1.Service) string { return o.Namespace + "/" + o.Name })
		}
		for _, es := range objs.Slices {
			all.Slices = replaceOrAppend(all.Slices, es, "EndpointSlice", seen, f, &all.Warnings,
				func(o *discoveryv1.EndpointSlice) string { return o.Namespace + "/" + o.Name })
		}
	}
	return all
}

func replaceOrAppend[T any](list []T, obj T, kind string, seen map[string]string, file string, warnings *[]string, id func(T) string) []T {
	key := kind + " " + id(obj)
	prev, dup := seen[key]
	seen[key] = file
	if !dup {
		return append(list, obj)
	}
	*warnings = append(*warnings, fmt.Sprintf("%s: %s is also defined in %s; using the one in %s", file, key, prev, file))
	for i := range list {
		if id(list[i]) == id(obj) {
			list[i] = obj
		}
	}
	return list
}
