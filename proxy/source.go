package proxy

import (
	"context"
	"log/slog"

	"github.com/kubetun/kubetun/resolver/manifest"
)

// SourceInfo describes a Source, for status.
type SourceInfo struct {
	// Kind is "manifests" or "kubernetes".
	Kind string `json:"kind"`
	// Path is the manifest file or directory, or the kubeconfig the
	// client was built from ("in-cluster" for a pod's own).
	Path string `json:"path,omitempty"`
	// Context is the kubeconfig context used.
	Context string `json:"context,omitempty"`
	// Server is the apiserver's URL.
	Server string `json:"server,omitempty"`
	// Namespace is the kubeconfig context's namespace ("default" if it
	// names none).
	Namespace string `json:"namespace,omitempty"`
}

// ManifestSource serves static manifests (resolver/manifest), watched for
// changes.
type ManifestSource struct {
	path  string
	src   *manifest.Source
	first manifest.Objects
}

var _ Source = (*ManifestSource)(nil)

// NewManifestSource reads path once: it fails at once if path cannot be
// read or does not parse.
func NewManifestSource(path string, log *slog.Logger) (*ManifestSource, error) {
	src, objs, err := manifest.NewSource(path, log)
	if err != nil {
		return nil, err
	}
	return &ManifestSource{path: path, src: src, first: objs}, nil
}

// Run implements Source: the objects read by NewManifestSource first, then
// every change.
func (m *ManifestSource) Run(ctx context.Context, r Receiver) error {
	r.Apply(objectsState(m.first))
	m.src.Run(ctx, func(objs manifest.Objects) { r.Apply(objectsState(objs)) })
	return nil
}

// Info implements Source.
func (m *ManifestSource) Info() SourceInfo { return SourceInfo{Kind: "manifests", Path: m.path} }

func objectsState(o manifest.Objects) State {
	return State{Services: o.Services, Slices: o.Slices, Warnings: o.Warnings, Changes: o.Changes}
}
