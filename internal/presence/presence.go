// Package presence owns cluster presence: which keys are online on which
// gateway nodes, with how many connections over which transports, and the
// registry of live nodes (id, address, connections, version, heartbeat).
//
// The hub tells it when a key's connection joins or leaves (Join, Leave);
// those only update this node's counts in memory and never wait on Redis:
// one goroutine per node writes the changed keys in pipelines (see Redis).
// Readers (GET /presence, GET /nodes) call Lookup and Nodes. Without Redis,
// Memory answers for this node alone.
//
// It must not know about sessions, transports' internals or HTTP, and must
// not block its callers on the network.
package presence

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/wspubsub/wspubsub/internal/metrics"
)

// Entry is one node's share of a key's presence.
type Entry struct {
	Node       string   `json:"node"`
	Conns      int      `json:"conns"`
	Transports []string `json:"transports"`
}

// Node is one live gateway node as registered.
type Node struct {
	ID        string    `json:"id"`
	Addr      string    `json:"addr"`
	Conns     int       `json:"conns"`
	Version   string    `json:"version"`
	Started   time.Time `json:"started"`
	Heartbeat time.Time `json:"heartbeat"` // its last one
}

// Presence is what the gateway needs: the hub's two calls, the readers,
// and the background work's lifetime.
type Presence interface {
	// Join counts one more connection of key over transport on this node.
	Join(key, transport string)
	// Leave counts one fewer; a Leave without its Join is ignored.
	Leave(key, transport string)
	// Lookup returns, for each of keys that is online, the live nodes
	// holding it. A key that is not online is absent from the map.
	Lookup(ctx context.Context, keys []string) (map[string][]Entry, error)
	// Nodes returns the live nodes, sorted by id.
	Nodes(ctx context.Context) ([]Node, error)
	// Run does the background work (registration, heartbeats, writes)
	// until ctx ends. Ending ctx without Close is a crash as far as the
	// others can tell: this node's entries go with its heartbeat.
	Run(ctx context.Context)
	// Close writes what is pending and deregisters this node, so that its
	// entries vanish at once; bounded by ctx. Call it after the hub's
	// shutdown (every Leave done), while Run is still running.
	Close(ctx context.Context) error
}

// ErrUnavailable wraps a reader's failure to reach the presence store.
var ErrUnavailable = errors.New("presence store unavailable")

// Config configures either implementation. Zero values take the defaults
// in brackets.
type Config struct {
	NodeID  string
	Addr    func() string // this node's address for others, read at each heartbeat
	Version string
	// Conns, when set, is this node's connection count for the registry
	// (the hub's: with per-key presence off nothing is counted here).
	Conns func() int
	// Heartbeat is the period of the node's registration refresh [5s]; a
	// node silent for two of its heartbeats is gone.
	Heartbeat time.Duration
	Now       func() time.Time // [time.Now]; tests move it
	Logger    *slog.Logger
	Metrics   *metrics.Metrics
}

// DefaultHeartbeat is the --presence-heartbeat default.
const DefaultHeartbeat = 5 * time.Second

func (c *Config) defaults() {
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Addr == nil {
		c.Addr = func() string { return "" }
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = metrics.New()
	}
}

// transportCount is one transport's connections of a key on this node.
type transportCount struct {
	name string
	n    int
}

// keyState is this node's view of one key.
type keyState struct {
	by      []transportCount // few: one per transport in use
	n       int
	dirty   bool // queued in counts.dirty
	written bool // this node's field is in the store (as far as the writer knows)
}

func (k *keyState) add(transport string, d int) bool {
	for i := range k.by {
		if k.by[i].name == transport {
			if k.by[i].n+d < 0 {
				return false
			}
			k.by[i].n += d
			k.n += d
			if k.by[i].n == 0 {
				k.by = slices.Delete(k.by, i, i+1)
			}
			return true
		}
	}
	if d < 0 {
		return false
	}
	k.by = append(k.by, transportCount{transport, d})
	k.n += d
	return true
}

func (k *keyState) entry(node string) Entry {
	e := Entry{Node: node, Conns: k.n, Transports: make([]string, 0, len(k.by))}
	for _, t := range k.by {
		e.Transports = append(e.Transports, t.name)
	}
	slices.Sort(e.Transports)
	return e
}

// counts is this node's presence in memory: every key with connections,
// plus (when tracking) keys whose last connection left but whose field the
// writer has not removed yet. Safe for concurrent use.
type counts struct {
	mu    sync.Mutex
	keys  map[string]*keyState
	total int
	// Tracking (the Redis writer): keys changed since they were last
	// written, each once, and how many of the map's entries are empty.
	track     bool
	dirty     []string
	empty     int
	overflow  bool // empty entries were let go: the store needs a resync
	maxEmpty  int
	onChanged func() // after a key was queued (outside the lock)
}

// maxEmpty bounds the emptied keys kept for the writer while the store is
// unreachable; past it they are let go and the next write is a resync.
const maxEmpty = 1 << 16

func newCounts(track bool, onChanged func()) *counts {
	return &counts{keys: map[string]*keyState{}, track: track, maxEmpty: maxEmpty, onChanged: onChanged}
}

func (c *counts) change(key, transport string, d int) {
	c.mu.Lock()
	k := c.keys[key]
	// An entry found with no connections is an emptied key kept for the
	// writer (only when tracking), counted in c.empty.
	wasEmpty := k != nil && k.n == 0
	if k == nil {
		if d < 0 {
			c.mu.Unlock()
			return
		}
		k = &keyState{}
		c.keys[key] = k
	}
	if !k.add(transport, d) {
		c.mu.Unlock()
		return
	}
	c.total += d
	queued := false
	switch {
	case !c.track:
		if k.n == 0 {
			delete(c.keys, key)
		}
	default:
		if wasEmpty {
			c.empty--
		}
		if k.n == 0 {
			if !k.written && !k.dirty {
				delete(c.keys, key) // never written: nothing to remove
				break
			}
			c.empty++
		}
		if !k.dirty {
			k.dirty = true
			c.dirty = append(c.dirty, key)
			queued = true
		}
		if c.empty > c.maxEmpty {
			c.dropEmpty()
		}
	}
	c.mu.Unlock()
	if queued && c.onChanged != nil {
		c.onChanged()
	}
}

// dropEmpty lets go of every emptied key (the store being unreachable for
// long under churn) and asks for a resync, which removes their fields by
// epoch instead. Under c.mu.
func (c *counts) dropEmpty() {
	for key, k := range c.keys {
		if k.n == 0 {
			delete(c.keys, key)
		}
	}
	c.dirty = slices.DeleteFunc(c.dirty, func(key string) bool { return c.keys[key] == nil })
	c.empty = 0
	c.overflow = true
}

// pending is the number of keys waiting to be written.
func (c *counts) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.dirty)
}

// connsOf is the node's connection count for the registry: cfg.Conns
// when set, else what c counted.
func connsOf(cfg *Config, c *counts) int {
	if cfg.Conns != nil {
		return cfg.Conns()
	}
	return c.liveTotal()
}

func (c *counts) liveTotal() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

func (c *counts) lookup(node string, keys []string) map[string][]Entry {
	out := map[string][]Entry{}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, key := range keys {
		if k := c.keys[key]; k != nil && k.n > 0 {
			out[key] = []Entry{k.entry(node)}
		}
	}
	return out
}

// write is one key's change as the writer sends it.
type write struct {
	key   string
	value string // the field's value; "" removes the field
	add   bool   // first write of the key: record it in the node's key set
}

// take removes up to n queued keys and returns their writes, with values
// encoded by enc. Keys that came and went between two writes cost nothing.
func (c *counts) take(n int, dst []write, enc func(*keyState) string) []write {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := 0
	for ; i < len(c.dirty) && len(dst) < n; i++ {
		key := c.dirty[i]
		k := c.keys[key]
		if k == nil {
			continue
		}
		k.dirty = false
		switch {
		case k.n == 0 && !k.written:
			delete(c.keys, key)
			c.empty--
		case k.n == 0:
			dst = append(dst, write{key: key})
		default:
			dst = append(dst, write{key: key, value: enc(k), add: !k.written})
		}
	}
	clear(c.dirty[:i])
	c.dirty = c.dirty[i:]
	if len(c.dirty) == 0 {
		c.dirty = nil // let a large backlog's array go
	}
	return dst
}

// done records the outcome of writes taken by take: on success which
// fields now exist; on failure the keys are queued again.
func (c *counts) done(ws []write, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range ws {
		k := c.keys[w.key]
		if k == nil {
			continue // let go by dropEmpty: the resync removes its field
		}
		switch {
		case !ok:
			if !k.dirty {
				k.dirty = true
				c.dirty = append(c.dirty, w.key)
			}
		case w.value != "":
			k.written = true
		default:
			k.written = false
			if k.n == 0 && !k.dirty {
				delete(c.keys, w.key)
				c.empty--
			}
		}
	}
}

// resync queues every live key for writing as if never written, lets go
// of emptied ones (a sweep by epoch removes their fields), and returns
// whether an overflow had asked for it.
func (c *counts) resync() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dirty = c.dirty[:0]
	for key, k := range c.keys {
		if k.n == 0 {
			delete(c.keys, key)
			continue
		}
		k.written, k.dirty = false, true
		c.dirty = append(c.dirty, key)
	}
	c.empty = 0
	was := c.overflow
	c.overflow = false
	return was
}

func (c *counts) needsResync() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.overflow
}

// live reports whether key has connections on this node.
func (c *counts) live(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := c.keys[key]
	return k != nil && k.n > 0
}
