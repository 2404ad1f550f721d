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
			daemon := false
			switch meta.Kind {
			case "DaemonSet":
				var ds appsv1.DaemonSet
				if err := json.Unmarshal(js, &ds); err != nil {
					t.Fatalf("%s: %v", file, err)
				}
				spec = &ds.Spec.Template.Spec
				daemon = true
				checkDaemonSet(t, file, &ds)
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
				cfg, err := parseRunFlags(args, io.Discard)
				if err != nil {
					t.Errorf("%s: kubetun run %s: %v", file, strings.Join(args, " "), err)
				}
				if daemon && !cfg.persist {
					t.Errorf("%s: the DaemonSet runs kubetun without --persist: its restarts would send service traffic out of the node", file)
				}
			}
		}
	}
	if found < 2 {
		t.Errorf("found %d kubetun containers in deploy/, want the DaemonSet's and the sidecar's", found)
	}
}

// checkDaemonSet checks what an operator relies on in the DaemonSet: the
// least privilege that works, probes, limits, and the node's name.
func checkDaemonSet(t *testing.T, file string, ds *appsv1.DaemonSet) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Errorf("%s: hostNetwork is off: the TUN and its routes would be the pod's, not the node's", file)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("%s: priorityClassName %q, want system-node-critical", file, spec.PriorityClassName)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Operator != corev1.TolerationOpExists || spec.Tolerations[0].Key != "" {
		t.Errorf("%s: tolerations %+v, want kube-proxy's (operator: Exists)", file, spec.Tolerations)
	}
	for _, c := range spec.Containers {
		if c.Name != "kubetun" {
			continue
		}
		sc := c.SecurityContext
		switch {
		case sc == nil || sc.Capabilities == nil:
			t.Errorf("%s: no securityContext.capabilities", file)
		case len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL":
			t.Errorf("%s: capabilities drop %v, want [ALL]", file, sc.Capabilities.Drop)
		case len(sc.Capabilities.Add) != 1 || sc.Capabilities.Add[0] != "NET_ADMIN":
			t.Errorf("%s: capabilities add %v, want [NET_ADMIN] only", file, sc.Capabilities.Add)
		}
		if sc != nil && (sc.Privileged != nil && *sc.Privileged ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem) {
			t.Errorf("%s: securityContext %+v, want not privileged, allowPrivilegeEscalation false, readOnlyRootFilesystem true", file, sc)
		}
		for probe, want := range map[*corev1.Probe]string{c.LivenessProbe: "/livez", c.ReadinessProbe: "/readyz"} {
			if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != want {
				t.Errorf("%s: a probe is %+v, want an HTTP GET of %s", file, probe, want)
			}
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: resources %+v, want CPU and memory requests and a memory limit", file, c.Resources)
		}
		nodeName := false
		for _, e := range c.Env {
			if e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName" {
				nodeName = true
			}
		}
		if !nodeName {
			t.Errorf("%s: no NODE_NAME from the downward API (spec.nodeName)", file)
		}
	}
}
