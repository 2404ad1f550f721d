package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// TestDeployArgs parses the command line of every kubetun container in
// deploy/ with today's flags, so that a renamed or removed flag cannot leave
// the shipped manifests broken. (test/e2e TestDeployManifests checks the
// manifests themselves against a real apiserver.)
func TestDeployArgs(t *testing.T) {
	files, err := filepath.Glob("../../deploy/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no deploy/*.yaml: %v", err)
	}
	found := 0
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			js, err := yaml.ToJSON(doc)
			if err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			var meta struct{ Kind string }
			if err := json.Unmarshal(js, &meta); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			var spec *corev1.PodSpec
			switch meta.Kind {
			case "DaemonSet":
				var ds appsv1.DaemonSet
				if err := json.Unmarshal(js, &ds); err != nil {
					t.Fatalf("%s: %v", file, err)
				}
				spec = &ds.Spec.Template.Spec
			case "Pod":
				var pod corev1.Pod
				if err := json.Unmarshal(js, &pod); err != nil {
					t.Fatalf("%s: %v", file, err)
				}
				spec = &pod.Spec
			default:
				continue
			}
			for _, c := range spec.Containers {
				if c.Name != "kubetun" {
					continue
				}
				found++
				if len(c.Args) == 0 || c.Args[0] != "run" {
					t.Errorf("%s: kubetun container args %q, want run and its flags", file, c.Args)
					continue
				}
				// The kubelet expands $(NODE_NAME) from the container's env.
				args := make([]string, len(c.Args)-1)
				for i, a := range c.Args[1:] {
					args[i] = strings.ReplaceAll(a, "$(NODE_NAME)", "node-1")
				}
				if _, err := parseRunFlags(args, io.Discard); err != nil {
					t.Errorf("%s: kubetun run %s: %v", file, strings.Join(args, " "), err)
				}
			}
		}
	}
	if found < 2 {
		t.Errorf("found %d kubetun containers in deploy/, want the DaemonSet's and the sidecar's", found)
	}
}
