// Package hub is the gateway's connection registry and router. It admits
// sessions (turning their credential into a routing key through a
// keystore.Authenticator, which it never looks behind), keeps every live
// session of every key, closes those whose credential expires (expiry.go)
// unless they present a fresh one (refresh.go),
// routes each inbound message to the sessions of its recipients, publishes
// connected/disconnected events, re-validates keys periodically and drives
// keep-alives.
//
// The hub sees sessions only through package session: it must not know which
// transport carries a connection, and must not block on any one of them —
// delivery only appends to a session's bounded queue.
package hub

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/ratelimit"
	"github.com/wspubsub/wspubsub/internal/session"
)

// Config configures a Hub. Zero durations take the defaults in brackets.
type Config struct {
	// Auth admits clients: it turns a credential into an identity
	// (routing key, expiry). When nil, Store is used as one
	// (keystore.FromStore): the key is its own identity, never expires.
	Auth   keystore.Authenticator
	Store  keystore.KeyStore
	Events broker.Broker // where connected/disconnected events go
	// History, when not nil, serves resuming clients (session.Peer.Resume).
	History broker.History
	// Router, when not nil, routes each key's messages to the nodes that
	// hold it: every admitted session holds one Watch of its key, taken
	// before it is registered (a message published once Admit returns
	// reaches it) and dropped when it leaves.
	Router Watcher
	// Presence, when not nil, is told of every admitted session (Join)
	// and of its end (Leave), where the connected/disconnected events are
	// emitted. It must not block.
	Presence Presence
	Metrics  *metrics.Metrics
	Logger   *slog.Logger

	NodeID              string
	ConnectedChannel    string
	DisconnectedChannel string
	JSONEvents          bool    // publish JSON events instead of the bare key
	UpstreamChannel     string  // where client text goes ("" drops it, counted)
	ClientRate          float64 // client messages per second per key [10]
	ClientBurst         int     // client message burst per key [20]

	MaxSessionsPerKey  int     // live sessions of one key (0: no cap)
	MaxSessionsPerAddr int     // live sessions from one client address (0: no cap)
	AuthFailRate       float64 // failed key checks per second per address [1]
	AuthFailBurst      int     // failed key checks allowed in a burst per address [20]

	MaxMessageBytes   int           // inbound envelope limit (0: none)
	KeyCheckTimeout   time.Duration // per key lookup [2s]
	RecheckInterval   time.Duration // key re-validation period [5m]; <0 disables
	KeepAliveInterval time.Duration // transport keep-alive period [25s]
}

// Watcher is the part of broker.Router the hub uses.
type Watcher interface {
	Watch(ctx context.Context, key string) error
	Unwatch(key string)
}

// Presence is the part of package presence the hub calls: counts of a
// key's connections per transport on this node, kept in memory by the
// callee (never a network call on the hub's path).
type Presence interface {
	Join(key, transport string)
	Leave(key, transport string)
}

const shardCount = 64

// LogRate and LogBurst bound refusal log lines, per message.
const LogRate, LogBurst = 5, 50

type shard struct {
	mu   sync.RWMutex
	keys map[string][]*session.Session
}

// Hub is safe for concurrent use, except Dispatch, which the broker calls
// from a single goroutine.
type Hub struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics.Metrics
	shards [shardCount]shard
	parser envelope.Parser
	events *eventPump

	clientText *ratelimit.Keyed   // client text, per key
	authFails  *ratelimit.Keyed   // failed key checks, per client address
	sampled    *ratelimit.Sampled // refusal log lines
	amu        sync.Mutex
	perAddr    map[string]int   // live sessions per client address (under amu)
	slots      map[string]*slot // key lookups running per client address (under amu)
	slotPool   sync.Pool        // of *slot

	live    atomic.Int64
	closing atomic.Bool
	nextID  atomic.Uint64
	seq     uint64 // Dispatch's message number (Dispatch's goroutine only)

	draining atomic.Bool // Admit refuses new sessions with CloseServiceRestart (drain.go)

	expiry  expiries                      // sessions whose credential expires (expiry.go)
	aliases map[string][]*session.Session // by credential, those admitted with one that is not their key (under amu)
}

// New builds a hub; call Run to start its background work.
func New(cfg Config) *Hub {
	if cfg.KeyCheckTimeout <= 0 {
		cfg.KeyCheckTimeout = 2 * time.Second
	}
	if cfg.RecheckInterval == 0 {
		cfg.RecheckInterval = 5 * time.Minute
	}
	if cfg.KeepAliveInterval <= 0 {
		cfg.KeepAliveInterval = 25 * time.Second
	}
	if cfg.ClientRate <= 0 {
		cfg.ClientRate = 10
	}
	if cfg.ClientBurst <= 0 {
		cfg.ClientBurst = 20
	}
	if cfg.AuthFailRate <= 0 {
		cfg.AuthFailRate = 1
	}
	if cfg.AuthFailBurst <= 0 {
		cfg.AuthFailBurst = 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Auth == nil && cfg.Store != nil {
		cfg.Auth = keystore.FromStore(cfg.Store)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New()
	}
	h := &Hub{cfg: cfg, log: cfg.Logger, m: cfg.Metrics,
		clientText: ratelimit.New(cfg.ClientRate, cfg.ClientBurst),
		authFails:  ratelimit.New(cfg.AuthFailRate, cfg.AuthFailBurst),
		sampled:    ratelimit.NewSampled(cfg.Logger, LogRate, LogBurst),
		perAddr:    map[string]int{}, slots: map[string]*slot{}, aliases: map[string][]*session.Session{}}
	h.expiry.init()
	h.parser.MaxBytes = cfg.MaxMessageBytes
	for i := range h.shards {
		h.shards[i].keys = make(map[string][]*session.Session)
	}
	h.events = newEventPump(cfg, h.log)
	return h
}

// NewID returns a connection id unique within this hub.
func (h *Hub) NewID() uint64 { return h.nextID.Add(1) }

// Live returns the number of registered sessions.
func (h *Hub) Live() int { return int(h.live.Load()) }

func (h *Hub) shardOf(key []byte) *shard {
	// FNV-1a, inline so that routing a []byte key allocates nothing.
	var x uint32 = 2166136261
	for _, c := range key {
		x ^= uint32(c)
		x *= 16777619
	}
	return &h.shards[x%shardCount]
}

// Run drives keep-alives, key re-validation and event publishing until ctx
// ends.
func (h *Hub) Run(ctx context.Context) {
	// Keep-alives go out in small slices spread over the interval, about
	// every 10 ms: one shard's sessions whose id falls in the tick's part.
	// A ping to many connections at once is a burst of writes that delays
	// the messages queued behind it (measured at 2,000 msg/s on 10,000
	// connections: a shard per tick, ~156 pings every 390 ms, put p99 at
	// 3 ms; without pings it was 1.2 ms).
	parts := max(1, int(h.cfg.KeepAliveInterval/(shardCount*10*time.Millisecond)))
	ka := time.NewTicker(h.cfg.KeepAliveInterval / time.Duration(shardCount*parts))
	defer ka.Stop()
	go h.runExpiry(ctx)
	next := 0 // tick number within one interval
	var recheck <-chan time.Time
	if h.cfg.RecheckInterval > 0 {
		t := time.NewTicker(h.cfg.RecheckInterval)
		defer t.Stop()
		recheck = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-ka.C:
			h.keepAlive(next, parts)
			next = (next + 1) % (shardCount * parts)
		case <-recheck:
			h.recheck(ctx)
		}
	}
}

// keepAlive sends the keep-alives of tick number tick of an interval cut
// into shardCount × parts ticks: over one interval every session gets one.
func (h *Hub) keepAlive(tick, parts int) {
	part := uint64(tick % parts)
	h.eachIn(&h.shards[tick/parts], func(s *session.Session) {
		if s.ID%uint64(parts) == part {
			s.KeepAlive()
		}
	})
}

// each calls f for every registered session, one shard at a time.
func (h *Hub) each(f func(*session.Session)) {
	for i := range h.shards {
		h.eachIn(&h.shards[i], f)
	}
}

func (h *Hub) eachIn(sh *shard, f func(*session.Session)) {
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	for _, list := range sh.keys {
		for _, s := range list {
			f(s)
		}
	}
}

// Find returns the live session that belongs to client (see
// session.Peer.Client) and was admitted with key — its routing key, or
// the credential it presented when that was another (a token) — or nil.
func (h *Hub) Find(key, client string) *session.Session {
	if client == "" {
		return nil
	}
	if s := h.findAlias(key, client); s != nil {
		return s
	}
	sh := h.shardOf([]byte(key))
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	for _, s := range sh.keys[key] {
		if s.Client == client && !s.IsClosed() && s.Credential() == "" {
			return s
		}
	}
	return nil
}

// Sessions returns the live sessions of key (a copy).
func (h *Hub) Sessions(key string) []*session.Session {
	sh := h.shardOf([]byte(key))
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return append([]*session.Session(nil), sh.keys[key]...)
}
