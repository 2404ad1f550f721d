package manifest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// Limits on what is decoded from one manifest file. A file is read as a
// stream, one object at a time, so its size costs nothing by itself: what
// costs memory is what is decoded, and that is what is limited. A file that
// passes a limit is refused with an error naming the file, the document (and
// List item) and the limit; the last good state stays in force.
//
// Memory, as measured: `kubectl get -o yaml` output keeps about twice its
// text once decoded, and decoding an object takes about thirty times its
// text while it lasts (the YAML is parsed into a tree, then turned into
// JSON, then into the object). Objects built to cost the most (slices of
// empty endpoints) keep about twenty times their text.
const (
	// MaxObjectSize is the largest object (a YAML document, a JSON value or
	// one List item) read into memory and decoded. An EndpointSlice holds at
	// most 1000 endpoints, about 400 KiB as kubectl prints them, and the
	// apiserver keeps a Service's annotations under 256 KiB.
	MaxObjectSize = 1 << 20

	// MaxObjects is how many objects (of any kind; Lists not counted) one
	// file may hold: over three times the 60 000 of 30 000 Services with
	// their EndpointSlices. It bounds what small objects cost, which is
	// more than their text.
	MaxObjects = 200_000

	// MaxDecodedSize is the most object text decoded from one file: over
	// twice the 56 MB of 30 000 Services with their EndpointSlices as
	// `kubectl get -o yaml` prints them.
	MaxDecodedSize = 128 << 20

	// maxWarnings is how many warnings one file may give: past it they are
	// counted, not kept.
	maxWarnings = 100
	// maxWarningLen is how long a warning may be; it quotes the file.
	maxWarningLen = 300
)

// limits are the limits a decoder applies: fileLimits, or smaller ones in
// tests.
type limits struct {
	object  int   // MaxObjectSize
	objects int   // MaxObjects
	size    int64 // MaxDecodedSize
}

var fileLimits = limits{MaxObjectSize, MaxObjects, MaxDecodedSize}

// decoder decodes the objects of one file, counting them against its
// limits.
type decoder struct {
	name     string // the file, for errors
	lim      limits
	objs     Objects
	objects  int             // objects decoded so far
	size     int64           // bytes of object text decoded so far
	warned   map[string]bool // the warnings in objs
	unwarned int             // warnings past maxWarnings

	// reuse holds the objects the file's last decode decoded, by their
	// text; cache gets this decode's, for the next (see reusing). Both
	// are nil when nothing is kept for a next decode.
	reuse, cache map[textKey]any

	errTooLarge error // an object over lim.object
}

func newDecoder(name string, lim limits) *decoder {
	return &decoder{name: name, lim: lim, warned: make(map[string]bool),
		errTooLarge: fmt.Errorf("larger than %s, the largest object kubetun decodes", size(int64(lim.object)))}
}

// size formats n bytes for an error.
func size(n int64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// warn adds a warning to d.objs, each once, within maxWarnings.
func (d *decoder) warn(w string) {
	if len(w) > maxWarningLen {
		w = w[:maxWarningLen] + "..."
	}
	switch {
	case d.warned[w]:
	case len(d.objs.Warnings) == maxWarnings:
		d.unwarned++
	default:
		d.warned[w] = true
		d.objs.Warnings = append(d.objs.Warnings, w)
	}
}

// done returns the objects decoded.
func (d *decoder) done() Objects {
	if d.unwarned > 0 {
		d.objs.Warnings = append(d.objs.Warnings, fmt.Sprintf("and %d more warnings", d.unwarned))
	}
	return d.objs
}

// stream decodes every document of r: a YAML stream, or JSON values one
// after another if its first line starts with "{" (as `kubectl get -o json`
// writes). A List whose items are streamed (see yamlDoc, jsonDoc) is
// decoded item by item, so the largest thing held in memory at once is one
// object's text.
func (d *decoder) stream(r io.Reader) error {
	lines := &lineReader{r: bufio.NewReaderSize(r, 64<<10), max: d.lim.object, errTooLarge: d.errTooLarge}
	doc := d.newYAMLDoc(1)
	content := false // a line other than blanks and comments was read
	for {
		line, err := lines.next()
		if errors.Is(err, io.EOF) {
			return d.docErr(doc.n, doc.end())
		}
		if err != nil {
			return d.docErr(doc.n, err)
		}
		if !content && !blankOrComment(line) {
			content = true
			if bytes.HasPrefix(bytes.TrimLeft(line, " \t"), []byte("{")) {
				// JSON: give the decoder this line and all after it.
				return d.jsonStream(io.MultiReader(bytes.NewReader(line), lines.r))
			}
		}
		if bytes.HasPrefix(line, []byte("---")) {
			// A document separator, as k8s.io/apimachinery's YAMLReader
			// reads them: a comment may follow, nothing else.
			if after := strings.TrimSpace(string(line[3:])); after != "" && after[0] != '#' {
				return d.docErr(doc.n, fmt.Errorf("invalid YAML document separator: %s", after))
			}
			if err := doc.end(); err != nil {
				return d.docErr(doc.n, err)
			}
			doc = d.newYAMLDoc(doc.n + 1)
			content = true
			continue
		}
		if err := doc.line(line); err != nil {
			return d.docErr(doc.n, err)
		}
	}
}

// docErr names the file and the document in err, if not nil.
func (d *decoder) docErr(doc int, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: document %d: %w", d.name, doc, err)
}

// object decodes one object's text (YAML or JSON; a List is decoded whole)
// into d.objs.
func (d *decoder) object(text []byte, isYAML bool) error {
	if err := d.count(text); err != nil {
		return err
	}
	return d.reusing(text, func() error { return d.decodeObject(text, isYAML) })
}

func (d *decoder) decodeObject(text []byte, isYAML bool) error {
	js := text
	if isYAML {
		var err error
		if js, err = yaml.ToJSON(text); err != nil {
			return err
		}
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil // a document of comments only
	}
	return d.add(js)
}

// item decodes the text of one streamed List item: for YAML, a one-entry
// block sequence ("- kind: Service\n  ..."), as the item stands in the List.
func (d *decoder) item(text []byte, isYAML bool) error {
	if err := d.count(text); err != nil {
		return err
	}
	return d.reusing(text, func() error { return d.decodeItem(text, isYAML) })
}

func (d *decoder) decodeItem(text []byte, isYAML bool) error {
	if !isYAML {
		return d.add(text)
	}
	js, err := yaml.ToJSON(text)
	if err != nil {
		return err
	}
	// The text is one entry of a sequence, so js is "[" value "]".
	js = bytes.TrimSpace(js)
	if len(js) < 2 || js[0] != '[' || js[len(js)-1] != ']' {
		return fmt.Errorf("not a List item: %.40q", text)
	}
	return d.add(js[1 : len(js)-1])
}

// textKey identifies an object's text: a hash (seeded at random, so that
// no file can be made to collide) and the length.
type textKey struct {
	hash uint64
	len  int
}

var textSeed = maphash.MakeSeed()

// reusing decodes text, an object's, with decode, unless the file's last
// decode (d.reuse) decoded the very same text into one Service or
// EndpointSlice: that object is taken again, as it is. A change to one
// object of a large file then costs reading the file, not decoding all of
// it, and the objects that did not change stay the same pointers, which
// the source's change tracker takes for no change at once. What decodes into one
// Service or EndpointSlice, without a warning, is kept in d.cache for the
// next decode.
func (d *decoder) reusing(text []byte, decode func() error) error {
	if d.cache == nil {
		return decode()
	}
	k := textKey{maphash.Bytes(textSeed, text), len(text)}
	if o, ok := d.reuse[k]; ok {
		if err := d.countObject(); err != nil {
			return err
		}
		switch o := o.(type) {
		case *corev1.Service:
			d.objs.Services = append(d.objs.Services, o)
		case *discoveryv1.EndpointSlice:
			d.objs.Slices = append(d.objs.Slices, o)
		}
		d.cache[k] = o
		return nil
	}
	m := d.mark()
	if err := decode(); err != nil {
		return err
	}
	svcs, slices := d.objs.Services[m[0]:], d.objs.Slices[m[1]:]
	switch {
	case len(d.objs.Warnings) != m[2]:
	case len(svcs) == 1 && len(slices) == 0:
		d.cache[k] = svcs[0]
	case len(svcs) == 0 && len(slices) == 1:
		d.cache[k] = slices[0]
	}
	return nil
}

// countObject counts an object against the limit on the file's.
func (d *decoder) countObject() error {
	if d.objects++; d.objects > d.lim.objects {
		return fmt.Errorf("more than %d objects in one file, the most kubetun decodes", d.lim.objects)
	}
	return nil
}

// count counts an object's text against the limit on the file's.
func (d *decoder) count(text []byte) error {
	if d.size += int64(len(text)); d.size > d.lim.size {
		return fmt.Errorf("more than %s of objects in one file, the most kubetun decodes", size(d.lim.size))
	}
	return nil
}

// mark is the length of d.objs' lists, to roll back to.
type mark [3]int

func (d *decoder) mark() mark {
	return mark{len(d.objs.Services), len(d.objs.Slices), len(d.objs.Warnings)}
}

func (d *decoder) rollback(m mark) {
	d.objs.Services = d.objs.Services[:m[0]]
	d.objs.Slices = d.objs.Slices[:m[1]]
	for _, w := range d.objs.Warnings[m[2]:] {
		delete(d.warned, w)
	}
	d.objs.Warnings = d.objs.Warnings[:m[2]]
}

// endList finishes a document whose items were streamed, given the rest of
// it: if it is not a List after all (its kind came after its items), its
// items are dropped and the rest is decoded as the object it is.
func (d *decoder) endList(rest []byte, isYAML bool, m mark) error {
	js := rest
	if isYAML {
		var err error
		if js, err = yaml.ToJSON(rest); err != nil {
			return err
		}
	}
	if kind := kindOf(js); strings.HasSuffix(kind, "List") {
		return nil
	}
	d.rollback(m)
	return d.add(js)
}

// kindOf returns the kind that js, an object's JSON, names, or "".
func kindOf(js []byte) string {
	var tm metav1.TypeMeta
	if json.Unmarshal(js, &tm) != nil {
		return ""
	}
	return tm.Kind
}

// yamlDoc is one YAML document being read line by line. A List whose items
// are a block sequence under a top-level "items:" line (as kubectl prints
// it) is decoded item by item as the lines come; the rest of the document
// (apiVersion, kind, metadata) is kept and decoded at its end. Any other
// document is kept whole and decoded at its end.
//
// Cutting items at lines is sound because YAML's block structure is in its
// indentation: every line of an item other than blank and comment lines is
// indented deeper than the item's "-" (block scalars included), and a line
// at column 0 that starts with "items:" is a top-level key, unless it
// continues a quoted or flow value, which the top-level lines before it then
// leave open: such a document is not streamed (see streams). A line that
// ends an item too early leaves it unparsable, an error, not another object.
type yamlDoc struct {
	d        *decoder
	n        int    // the document's number in the file, from 1
	rest     []byte // the document but its streamed items
	state    int    // top, key or items
	indent   int    // of the items' "-", in state items
	item     []byte // the item being read
	items    int    // items decoded
	streamed bool   // the items are streamed
	list     string // the List's kind, for errors ("List" until known)
	m        mark   // where the document's objects start
}

// yamlDoc states.
const (
	top   = iota // reading the document's top-level lines
	key          // after "items:", before its first item
	items        // reading items
)

func (d *decoder) newYAMLDoc(n int) *yamlDoc {
	return &yamlDoc{d: d, n: n, list: "List", m: d.mark()}
}

// line takes the document's next line.
func (y *yamlDoc) line(l []byte) error {
	if y.state != top {
		if blankOrComment(l) {
			return y.appendItem(l)
		}
		ind := indentOf(l)
		switch {
		case y.state == key && isDash(l, ind):
			y.state, y.indent = items, ind
			return y.appendItem(l)
		case y.state == key:
			// Not a block sequence: the items stay in the rest.
			y.state, y.streamed = top, false
			y.rest = append(y.rest, "items:\n"...)
		case ind == y.indent && isDash(l, ind):
			if err := y.endItem(); err != nil {
				return err
			}
			return y.appendItem(l)
		case ind > y.indent:
			return y.appendItem(l)
		default:
			if err := y.endItem(); err != nil {
				return err
			}
			y.state = top
		}
	}
	if isItemsKey(l) && y.streamed {
		return errors.New("items given twice")
	}
	if isItemsKey(l) && y.streams() {
		y.state, y.streamed = key, true
		return nil
	}
	return y.appendRest(l)
}

// streams reports whether the document's items are to be streamed: if its
// top-level lines so far parse (else "items:" may be inside a value) and
// name no kind but a List's.
func (y *yamlDoc) streams() bool {
	js, err := yaml.ToJSON(y.rest)
	if err != nil {
		return false // decoded whole, at the end: as the YAML parser sees it
	}
	switch kind := kindOf(js); {
	case kind == "":
		return true // it may come after the items, as kubectl prints it
	case strings.HasSuffix(kind, "List"):
		y.list = kind
		return true
	}
	return false
}

func (y *yamlDoc) appendRest(l []byte) error {
	y.rest = appendLine(y.rest, l)
	if len(y.rest) > y.d.lim.object {
		return y.d.errTooLarge
	}
	return nil
}

func (y *yamlDoc) appendItem(l []byte) error {
	if y.state != items {
		return nil // blank or comment lines before the first item
	}
	y.item = appendLine(y.item, l)
	if len(y.item) > y.d.lim.object {
		return fmt.Errorf("%s item %d: %w", y.list, y.items, y.d.errTooLarge)
	}
	return nil
}

// endItem decodes the item read, if any.
func (y *yamlDoc) endItem() error {
	if len(y.item) == 0 {
		return nil
	}
	err := y.d.item(y.item, true)
	y.item = y.item[:0]
	y.items++
	if err != nil {
		return fmt.Errorf("%s item %d: %w", y.list, y.items-1, err)
	}
	return nil
}

// end decodes what is left of the document.
func (y *yamlDoc) end() error {
	if y.state == key {
		y.streamed = false // "items:" and nothing: a List without items
		y.rest = append(y.rest, "items:\n"...)
	}
	if err := y.endItem(); err != nil {
		return err
	}
	if y.streamed {
		return y.d.endList(y.rest, true, y.m)
	}
	if len(bytes.TrimSpace(y.rest)) == 0 {
		return nil
	}
	return y.d.object(y.rest, true)
}

// appendLine appends l to b, ending it with a newline.
func appendLine(b, l []byte) []byte {
	b = append(b, l...)
	if len(l) == 0 || l[len(l)-1] != '\n' {
		b = append(b, '\n')
	}
	return b
}

func blankOrComment(l []byte) bool {
	t := bytes.TrimLeft(l, " \t\r\n")
	return len(t) == 0 || t[0] == '#'
}

func indentOf(l []byte) int {
	return len(l) - len(bytes.TrimLeft(l, " "))
}

// isDash reports whether l has a block sequence entry's "-" at column ind.
func isDash(l []byte, ind int) bool {
	return ind < len(l) && l[ind] == '-' && (ind+1 == len(l) || strings.IndexByte(" \t\r\n", l[ind+1]) >= 0)
}

// isItemsKey reports whether l is a top-level "items:" with its value on
// the lines below.
func isItemsKey(l []byte) bool {
	after, ok := bytes.CutPrefix(l, []byte("items:"))
	if !ok {
		return false
	}
	t := bytes.TrimLeft(after, " \t\r\n")
	return len(t) == 0 || t[0] == '#' && len(t) < len(after) // a comment needs a space before it
}

// lineReader reads lines, refusing one longer than max.
type lineReader struct {
	r           *bufio.Reader
	max         int
	errTooLarge error
	long        []byte // a line longer than r's buffer
}

// next returns the next line, with its newline if it has one; it is valid
// until the next call.
func (lr *lineReader) next() ([]byte, error) {
	line, err := lr.r.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		if errors.Is(err, io.EOF) && len(line) > 0 {
			err = nil // the last line, without a newline; EOF comes next
		}
		return line, err
	}
	lr.long = append(lr.long[:0], line...)
	for errors.Is(err, bufio.ErrBufferFull) {
		if len(lr.long) > lr.max {
			return nil, lr.errTooLarge
		}
		line, err = lr.r.ReadSlice('\n')
		lr.long = append(lr.long, line...)
	}
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return lr.long, err
}

// jsonStream decodes JSON values one after another from r, each as a
// jsonDoc.
func (d *decoder) jsonStream(r io.Reader) error {
	lim := &limitReader{r: r, max: d.lim.object, errTooLarge: d.errTooLarge}
	dec := json.NewDecoder(lim)
	for n := 1; ; n++ {
		lim.allow()
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err == nil && tok != json.Delim('{') {
			err = fmt.Errorf("not a Kubernetes object: %v", tok)
		}
		if err == nil {
			err = d.jsonDoc(dec, lim)
		}
		if err != nil {
			return d.docErr(n, err)
		}
	}
}

// jsonDoc decodes one JSON object whose "{" has been read. Like a YAML
// List, a JSON List's items are decoded one by one as they are read; the
// rest of the object is kept and decoded at its end.
func (d *decoder) jsonDoc(dec *json.Decoder, lim *limitReader) error {
	rest := []byte{'{'}
	streamed := false
	list := "List"
	m := d.mark()
	for dec.More() {
		lim.allow()
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		if key == "items" && !streamed {
			// Streamed unless the keys so far name a kind that is not a
			// List (kubectl prints the kind after the items).
			kind := kindOf(append(rest[:len(rest):len(rest)], '}'))
			if kind == "" || strings.HasSuffix(kind, "List") {
				if kind != "" {
					list = kind
				}
				if err := d.jsonItems(dec, lim, list); err != nil {
					return err
				}
				streamed = true
				continue
			}
		}
		lim.allow()
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		k, _ := json.Marshal(key)
		if len(rest) > 1 {
			rest = append(rest, ',')
		}
		rest = append(append(append(rest, k...), ':'), raw...)
		if len(rest) > d.lim.object {
			return d.errTooLarge
		}
	}
	if _, err := dec.Token(); err != nil { // "}"
		return err
	}
	rest = append(rest, '}')
	if streamed {
		return d.endList(rest, false, m)
	}
	return d.object(rest, false)
}

// jsonItems decodes a List's items, one by one, after its "items" key.
func (d *decoder) jsonItems(dec *json.Decoder, lim *limitReader, list string) error {
	lim.allow()
	tok, err := dec.Token()
	if err != nil || tok == nil { // "items": null
		return err
	}
	if tok != json.Delim('[') {
		return fmt.Errorf("%s: items is not a list", list)
	}
	for i := 0; dec.More(); i++ {
		lim.allow()
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if err == nil && len(raw) > d.lim.object {
			err = d.errTooLarge
		}
		if err == nil {
			err = d.item(raw, false)
		}
		if err != nil {
			return fmt.Errorf("%s item %d: %w", list, i, err)
		}
	}
	_, err = dec.Token() // "]"
	return err
}

// limitReader lets a json.Decoder read at most max bytes past the last
// allow: with what it had buffered, no value it reads can take more than
// about twice max of memory.
type limitReader struct {
	r           io.Reader
	max, left   int
	errTooLarge error
}

func (l *limitReader) allow() { l.left = l.max + 1 }

func (l *limitReader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, l.errTooLarge
	}
	if len(p) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= n
	return n, err
}
