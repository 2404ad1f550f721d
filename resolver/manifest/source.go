package manifest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"time"
)

// PollInterval is how often a Source looks at its files. Polling (rather
// than inotify) sees every way a file can change: an editor's rename, a
// ConfigMap volume's symlink swap, a file on a network filesystem. Reading a
// few small files twice a second costs next to nothing, and keeps a change
// well within the one second kubetun promises.
const PollInterval = 500 * time.Millisecond

// Source watches a manifest file or directory and hands every new, valid
// set of objects to a callback.
type Source struct {
	path     string
	log      *slog.Logger
	interval time.Duration

	// Owned by Run's goroutine once Run starts.
	applied [sha256.Size]byte // digest of the contents last handed to apply
	failure string            // the error last logged, so each is logged once
}

// NewSource reads path once and returns the Source and what it holds. It
// fails if path cannot be read or does not parse: at start there is no last
// good state to keep.
func NewSource(path string, log *slog.Logger) (*Source, Objects, error) {
	s := &Source{path: path, log: log, interval: PollInterval}
	sum, files, contents, err := s.read()
	if err != nil {
		return nil, Objects{}, fmt.Errorf("reading manifests: %w", err)
	}
	objs, err := decodeAll(files, contents)
	if err != nil {
		return nil, Objects{}, err
	}
	if len(files) == 0 {
		objs.Warnings = append(objs.Warnings, fmt.Sprintf("%s: no .yaml, .yml or .json file; serving nothing until one appears", path))
	}
	s.applied = sum
	return s, objs, nil
}

// Run polls until ctx is done, calling apply with the objects of every change
// that parses. A change that does not parse is logged once, naming the file
// and the problem, and the last good objects stay in force.
func (s *Source) Run(ctx context.Context, apply func(Objects)) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sum, files, contents, err := s.read()
		if err == nil && sum == s.applied {
			s.failure = "" // back to the applied state: a new failure is news again
			continue
		}
		if err == nil {
			var objs Objects
			objs, err = decodeAll(files, contents)
			if err == nil && !s.settled(sum) {
				continue // still being written: look again at the next tick
			}
			if err == nil {
				s.applied, s.failure = sum, ""
				s.log.Info("manifests changed", "path", s.path, "services", len(objs.Services), "endpointslices", len(objs.Slices))
				apply(objs)
				continue
			}
		}
		if err.Error() != s.failure {
			s.log.Error("manifests not applied; keeping the last good state", "err", err)
			s.failure = err.Error()
		}
	}
}

// settleTime is how long a change must stay the same before it is applied.
// A file written in place (a shell's >, a copy) can be read half-written;
// half a file often parses, as a shorter list of endpoints.
const settleTime = 50 * time.Millisecond

// settled reports whether the files still have digest sum after settleTime.
func (s *Source) settled(sum [sha256.Size]byte) bool {
	time.Sleep(settleTime)
	again, _, _, err := s.read()
	return err == nil && again == sum
}

// read returns the files at s.path, their contents, and a digest of both.
func (s *Source) read() (sum [sha256.Size]byte, files []string, contents map[string][]byte, err error) {
	files, err = Files(s.path)
	if err != nil {
		return sum, nil, nil, err
	}
	h := sha256.New()
	contents = make(map[string][]byte, len(files))
	present := files[:0]
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since Files listed it: as if never listed
		}
		if err != nil {
			return sum, nil, nil, err
		}
		present = append(present, f)
		contents[f] = b
		fmt.Fprintf(h, "%s\x00%d\x00", f, len(b))
		h.Write(b)
	}
	copy(sum[:], h.Sum(nil))
	return sum, present, contents, nil
}
