package kube

import (
	"slices"
	"sync"

	"k8s.io/client-go/tools/cache"
)

// stableList is an informer's objects in an order that changes only where
// objects do: a changed object takes its predecessor's place, a new one
// goes at the end, a deleted one's place goes to the last. resolver.Build
// then finds a change by comparing two lists position by position, where
// the store's List, in map order, would make it look every object up.
type stableList[T any] struct {
	store cache.Store

	mu      sync.Mutex
	pending map[string]bool // keys changed since the last read

	items []T // owned by the goroutine that reads
	pos   map[string]int
	keys  []string
}

func newStableList[T any](store cache.Store) *stableList[T] {
	return &stableList[T]{store: store, pending: make(map[string]bool), pos: make(map[string]int)}
}

// changed records that the object with key changed; the event handlers
// call it, before they tell the reader.
func (l *stableList[T]) changed(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	l.mu.Lock()
	l.pending[key] = true
	l.mu.Unlock()
}

// reset reads the whole store, dropping what was pending: the store holds
// every change so far.
func (l *stableList[T]) reset() {
	l.mu.Lock()
	clear(l.pending)
	l.mu.Unlock()
	l.items, l.keys = l.items[:0], l.keys[:0]
	clear(l.pos)
	for _, key := range l.store.ListKeys() {
		l.apply(key)
	}
}

// list brings the list up to date with the pending changes and returns a
// copy the caller may keep.
func (l *stableList[T]) list() []T {
	l.mu.Lock()
	keys := make([]string, 0, len(l.pending))
	for k := range l.pending {
		keys = append(keys, k)
	}
	clear(l.pending)
	l.mu.Unlock()
	// In key order, so the same changes give the same list whatever order
	// the map kept them in.
	slices.Sort(keys)
	for _, k := range keys {
		l.apply(k)
	}
	return slices.Clone(l.items)
}

// apply reads key from the store into the list.
func (l *stableList[T]) apply(key string) {
	var obj T
	o, exists, err := l.store.GetByKey(key)
	if err == nil && exists {
		obj, exists = o.(T)
	}
	i, listed := l.pos[key]
	switch {
	case exists && listed:
		l.items[i] = obj
	case exists:
		l.pos[key] = len(l.items)
		l.items, l.keys = append(l.items, obj), append(l.keys, key)
	case listed:
		last := len(l.items) - 1
		l.items[i], l.keys[i] = l.items[last], l.keys[last]
		l.pos[l.keys[i]] = i
		var zero T
		l.items[last] = zero
		l.items, l.keys = l.items[:last], l.keys[:last]
		delete(l.pos, key)
	}
}
