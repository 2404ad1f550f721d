package manifest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/kubetun/kubetun/resolver"
)

// PollInterval is how often a Source looks at its files. Polling (rather
// than inotify) sees every way a file can change: an editor's rename, a
// ConfigMap volume's symlink swap, a file on a network filesystem. A poll
// costs one stat per file; only a file whose size, modification time or
// identity changed is read (and hashed) again, and only a file whose
// contents changed is decoded again. Twice a second keeps a change well
// within the one second kubetun promises.
const PollInterval = 500 * time.Millisecond

// verifyEvery is how many polls may trust file metadata before every file
// is read and hashed again: an NFS client may serve cached attributes for up
// to a minute (acregmax), while open() always revalidates (close-to-open
// consistency, nfs(5)). Every 10 s is cheap: hashing, not decoding.
const verifyEvery = 20

// racyWindow is how old a file's modification time must be, when the file
// is read, for its metadata to stand for its contents: a write in the same
// timestamp tick as the read, with the same size, would otherwise go
// unseen (git calls such entries "racily clean").
const racyWindow = 2 * time.Second

// Source watches a manifest file or directory and hands every new, valid
// set of objects to a callback.
type Source struct {
	path     string
	log      *slog.Logger
	interval time.Duration
	dir      bool // path was a directory at start

	// Owned by Run's goroutine once Run starts.
	files   map[string]*fileState   // by path, from the last poll
	polls   atomic.Int64            // polls so far; atomic for tests
	applied [sha256.Size]byte       // digest of the contents last handed to apply
	failure string                  // the error last logged, so each is logged once
	valid   map[objectKey]any       // the last valid version of each object, as applied
	tracker *resolver.ChangeTracker // what changed since the last Objects handed out

	reads, decodes atomic.Int64 // files read and decoded so far, for tests
}

// fileState is what a Source remembers of one file: enough to know, from a
// stat, that it has not changed, and what it held, decoded or not.
type fileState struct {
	info    fs.FileInfo
	trusted bool // info was taken well after the file's last change
	sum     [sha256.Size]byte
	objs    Objects
	err     error           // why the contents do not decode; kept to report, not retried
	invalid map[any]string  // why each invalid object of objs is invalid
	reuse   map[textKey]any // objs by their text, for the next decode
}

// NewSource reads path once and returns the Source and what it holds. It
// fails if path cannot be read or does not parse: at start there is no last
// good state to keep.
func NewSource(path string, log *slog.Logger) (*Source, Objects, error) {
	s := &Source{path: path, log: log, interval: PollInterval, tracker: resolver.NewChangeTracker()}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, Objects{}, fmt.Errorf("reading manifests: %w", err)
	}
	s.dir = fi.IsDir()
	sum, files, err := s.poll(time.Now())
	if err != nil {
		return nil, Objects{}, fmt.Errorf("reading manifests: %w", err)
	}
	objs := s.objects(files)
	if len(files) == 0 {
		objs.Warnings = append(objs.Warnings, fmt.Sprintf("%s: no .yaml, .yml or .json file; serving nothing until one appears", path))
	}
	s.applied = sum
	return s, objs, nil
}

// Run polls until ctx is done, calling apply with the objects of every change
// that parses. A change that does not parse is logged once, naming the file
// and the problem, and the last good objects stay in force. Within a change
// that parses, an object whose new version is invalid keeps its last valid
// version, with a warning (see keepValid).
func (s *Source) Run(ctx context.Context, apply func(Objects)) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sum, files, err := s.poll(time.Now())
		if err == nil && sum == s.applied {
			s.failure = "" // back to the applied state: a new failure is news again
			continue
		}
		if err == nil && !s.settled(sum) {
			continue // still being written: look again at the next tick
		}
		if err == nil {
			objs := s.objects(files)
			s.applied, s.failure = sum, ""
			s.log.Info("manifests changed", "path", s.path, "services", len(objs.Services), "endpointslices", len(objs.Slices))
			apply(objs)
			continue
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
	again, _, err := s.poll(time.Now())
	return err == nil && again == sum
}

// poll looks at the files at s.path and returns a digest of their names and
// contents, and the files (their objects are then in s.files). It reads only
// files that may have changed and decodes only files whose contents changed,
// so an unchanged file, good or broken, costs a stat.
func (s *Source) poll(now time.Time) (sum [sha256.Size]byte, files []string, err error) {
	fi, err := os.Stat(s.path)
	if err != nil {
		return sum, nil, err
	}
	switch {
	case s.dir && !fi.IsDir():
		return sum, nil, fmt.Errorf("%s was a directory and is now a file; give kubetun the file, or restore the directory", s.path)
	case !s.dir && fi.IsDir():
		return sum, nil, fmt.Errorf("%s was a manifest file and is now a directory; give kubetun the directory, or restore the file", s.path)
	}
	files, err = Files(s.path)
	if err != nil {
		return sum, nil, err
	}
	verify := s.polls.Add(1)%verifyEvery == 1
	next := make(map[string]*fileState, len(files))
	present := files[:0]
	h := sha256.New()
	var errs []error
	for _, f := range files {
		st, err := s.file(f, now, verify)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since Files listed it: as if never listed
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		next[f] = st
		present = append(present, f)
		fmt.Fprintf(h, "%s\x00", f)
		h.Write(st.sum[:])
		if st.err != nil {
			errs = append(errs, st.err)
		}
	}
	s.files = next
	copy(sum[:], h.Sum(nil))
	if len(errs) > 0 {
		return sum, nil, errors.Join(errs...)
	}
	return sum, present, nil
}

// objects merges the objects of files, as the last poll found them, keeping
// the last valid version of each object now invalid, and says what changed
// since the last call, key by key (the change tracker compares each key's
// object with the one handed out before: an object whose file changed
// elsewhere, or only in what the table does not read, is no change). It is
// called only for a change, not on every poll.
func (s *Source) objects(files []string) Objects {
	decoded := make(map[string]Objects, len(files))
	invalid := make(map[any]invalidity)
	for _, f := range files {
		st := s.files[f]
		decoded[f] = st.objs
		for o, why := range st.invalid {
			invalid[o] = invalidity{f, why}
		}
	}
	all := merge(files, decoded)
	valid := make(map[objectKey]any, len(all.Services)+len(all.Slices))
	keepValid(all.Services, "Service", invalid, s.valid, valid, &all.Warnings)
	keepValid(all.Slices, "EndpointSlice", invalid, s.valid, valid, &all.Warnings)
	s.valid = valid
	s.tracker.Replace(all.Services, all.Slices)
	all.Changes = s.tracker.Take()
	if all.Changes == nil {
		all.Changes = &resolver.Changes{}
	}
	return all
}

// file returns the state of manifest file f, from the last poll if its
// metadata says it is unchanged (and verify is false), else read again; it
// is decoded only if its contents changed, and then only the objects whose
// text changed (see decoder.reusing). Reading and decoding stream the file:
// neither holds it whole in memory.
func (s *Source) file(f string, now time.Time, verify bool) (*fileState, error) {
	info, err := os.Stat(f)
	if err != nil {
		return nil, err
	}
	if info.IsDir() {
		return nil, fmt.Errorf("%s is a directory, not a manifest file", f)
	}
	prev := s.files[f]
	if prev != nil && prev.trusted && !verify && sameFile(prev.info, info) {
		return prev, nil
	}
	s.reads.Add(1)
	st := &fileState{info: info, trusted: now.Sub(info.ModTime()) > racyWindow}
	if prev != nil {
		if st.sum, err = hashFile(f); err != nil {
			return nil, err
		}
		if st.sum == prev.sum {
			st.objs, st.err, st.invalid, st.reuse = prev.objs, prev.err, prev.invalid, prev.reuse
			return st, nil
		}
	}
	s.decodes.Add(1)
	reuse := map[textKey]any{}
	if prev != nil && prev.reuse != nil {
		reuse = prev.reuse
	}
	if st.objs, st.reuse, st.sum, st.err, err = decodeFile(f, reuse); err != nil {
		return nil, err
	}
	if st.reuse == nil {
		st.reuse = reuse // broken: kept for when it is fixed
	}
	st.invalid = invalidObjects(st.objs)
	return st, nil
}

// sameFile reports whether a and b, two stats of one path, show the same
// unchanged file.
func sameFile(a, b fs.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// hashFile returns the digest of f's contents.
func hashFile(f string) (sum [sha256.Size]byte, err error) {
	file, err := os.Open(f)
	if err != nil {
		return sum, err
	}
	defer file.Close()
	h := sha256.New()
	if _, err := io.Copy(h, file); err != nil {
		return sum, fmt.Errorf("reading %s: %w", f, err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// decodeFile decodes manifest file f as it reads it, reusing objects
// decoded from the same text the last time (see decode). It returns the
// objects and, if reuse is not nil, them by their text for the next decode;
// the digest of the contents read (all of them, even when decoding stopped
// early, so that an unchanged broken file is not decoded again); why the
// contents do not decode (bad), and why f could not be read (err).
func decodeFile(f string, reuse map[textKey]any) (objs Objects, next map[textKey]any, sum [sha256.Size]byte, bad, err error) {
	file, err := os.Open(f)
	if err != nil {
		return objs, nil, sum, nil, err
	}
	defer file.Close()
	hr := &hashReader{r: file, h: sha256.New()}
	objs, next, bad = decode(f, hr, fileLimits, reuse)
	io.Copy(io.Discard, hr) // the rest, into the digest; an error is in hr.err
	if hr.err != nil {
		return Objects{}, nil, sum, nil, fmt.Errorf("reading %s: %w", f, hr.err)
	}
	copy(sum[:], hr.h.Sum(nil))
	return objs, next, sum, bad, nil
}

// hashReader hashes what is read through it, and keeps the first read
// error: the file's fault, not its contents'.
type hashReader struct {
	r   io.Reader
	h   hash.Hash
	err error
}

func (r *hashReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.h.Write(p[:n])
	if err != nil && !errors.Is(err, io.EOF) && r.err == nil {
		r.err = err
	}
	return n, err
}
