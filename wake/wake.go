// Package wake tells when this host's long-lived connections may have died
// without a word: after the host resumed from sleep, or the process was
// stopped, for a while; and when the host's network changed (an address or
// a route came or went, as on a new Wi-Fi). A laptop's port-forward
// connections die of these (https://github.com/txn2/kubefwd/issues/70),
// and otherwise hang until TCP gives up
// (https://github.com/kubernetes/kubectl/issues/1525).
package wake

import (
	"fmt"
	"sync"
	"time"
)

// Kind is what happened.
type Kind int

const (
	// Resumed: the process did not run for a while (the host slept, or the
	// process was stopped), so that every connection may be dead.
	Resumed Kind = iota
	// NetworkChanged: an address or a route of the host came or went.
	NetworkChanged
)

func (k Kind) String() string {
	if k == Resumed {
		return "resumed"
	}
	return "network changed"
}

// Event is one wake-up.
type Event struct {
	Kind   Kind
	Detail string // what was seen, for a log
}

// Defaults of Config.
const (
	DefaultTick   = time.Second
	DefaultGap    = 5 * time.Second
	DefaultSettle = 250 * time.Millisecond
)

// Config configures Watch. Notify is required.
type Config struct {
	// Tick is how often the clocks are read. Zero means DefaultTick.
	Tick time.Duration
	// Gap is how long the process may not run before it counts as
	// resumed: a tick that comes this much late, or the wall clock gone
	// this much further than the monotonic one (on Linux the monotonic
	// clock stands still while the host sleeps). Zero means DefaultGap.
	Gap time.Duration
	// Network follows the host's addresses and routes (netlink, Linux
	// only); Ignore, if set, leaves out changes on the named link (one's
	// own TUN, whose routes change as Services do).
	Network bool
	Ignore  string
	// IgnorePrefix, if set, leaves out changes on every link whose name
	// begins with it: the TUNs of other kubetun connections, whose routes
	// change as their clusters' Services do.
	IgnorePrefix string
	// Settle: the first change of the network is told at once, and those
	// that follow within Settle in one more Event after it. Zero means
	// DefaultSettle.
	Settle time.Duration
	// Notify is called, from the Watcher's goroutine, for each Event.
	Notify func(Event)
}

// Watcher watches until Close.
type Watcher struct {
	cfg  Config
	done chan struct{}
	wg   sync.WaitGroup
}

// Watch starts watching.
func Watch(cfg Config) (*Watcher, error) {
	if cfg.Tick <= 0 {
		cfg.Tick = DefaultTick
	}
	if cfg.Gap <= 0 {
		cfg.Gap = DefaultGap
	}
	if cfg.Settle <= 0 {
		cfg.Settle = DefaultSettle
	}
	w := &Watcher{cfg: cfg, done: make(chan struct{})}
	var changes <-chan string
	if cfg.Network {
		ch, err := w.watchNetwork()
		if err != nil {
			close(w.done)
			w.wg.Wait()
			return nil, err
		}
		changes = ch
	}
	w.wg.Add(1)
	go w.run(changes)
	return w, nil
}

// run reads the clocks every Tick, and gathers network changes for Settle.
func (w *Watcher) run(changes <-chan string) {
	defer w.wg.Done()
	tick := time.NewTicker(w.cfg.Tick)
	defer tick.Stop()
	last := time.Now()
	var (
		settle  <-chan time.Time
		pending string
	)
	for {
		select {
		case <-w.done:
			return
		case now := <-tick.C:
			now = time.Now() // the ticker's time is when it fired, not when this runs
			if detail, ok := resumed(now.Sub(last), now.Round(0).Sub(last.Round(0)), w.cfg.Tick, w.cfg.Gap); ok {
				w.cfg.Notify(Event{Kind: Resumed, Detail: detail})
			}
			last = now
		case c := <-changes:
			// The first change is told at once; those that follow within
			// Settle (a new network brings several) once, after it.
			if settle == nil {
				w.cfg.Notify(Event{Kind: NetworkChanged, Detail: c})
				settle = time.After(w.cfg.Settle)
			} else if pending == "" {
				pending = c
			}
		case <-settle:
			if pending != "" {
				w.cfg.Notify(Event{Kind: NetworkChanged, Detail: pending})
			}
			pending, settle = "", nil
		}
	}
}

// resumed reports whether a tick mono (monotonic clock) and wall (wall
// clock) after the one before, expected tick after it, shows the process
// not running for gap or longer, and says how.
func resumed(mono, wall, tick, gap time.Duration) (string, bool) {
	switch {
	case wall-mono >= gap:
		return fmt.Sprintf("the wall clock went %v further than the monotonic one: the host slept", (wall - mono).Round(time.Second)), true
	case mono-tick >= gap:
		return fmt.Sprintf("the process did not run for %v (stopped, or the host slept)", (mono - tick).Round(time.Second)), true
	}
	return "", false
}

// Close stops watching and waits for the Watcher's goroutines.
func (w *Watcher) Close() {
	close(w.done)
	w.wg.Wait()
}
