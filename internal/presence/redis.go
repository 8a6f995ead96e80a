package presence

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/metrics"
)

// Redis layout. Every command touches one key, so it works unchanged on a
// Redis Cluster (the braces are hash tags: a key's hash, a node's record
// and a node's key set each live in one slot).
//
//	wspubsub:p:{<key>}      hash: node id → {"e":epoch,"c":conns,"t":[transports]}
//	wspubsub:n:{<node id>}  string: the node's record (JSON), TTL two heartbeats
//	wspubsub:nk:{<node id>} set: the keys the node has a field for (clean-up only)
//	wspubsub:nodes          hash: node id → epoch of its registration
//
// A field counts only while its node's record exists, was refreshed within
// two of its heartbeats, and carries the field's epoch: a node killed
// without clean-up drops out of every answer when its record expires, with
// no per-key heartbeat. The epoch changes whenever the node (re)registers —
// at start, and when its record was found gone (Redis restarted or lost
// it, or the node stalled past its TTL) — so a restart under the same id
// never revives its old fields; it then rewrites its live keys and sweeps
// the old fields through its key set. Fields nobody sweeps (a node id that
// never comes back) are removed by the others: each heartbeat samples two
// registered ids and empties a dead one's key set 500 keys at a time.
// Readers also delete the stale fields they meet.
const (
	presencePrefix = "wspubsub:p:{"
	nodePrefix     = "wspubsub:n:{"
	nodeKeysPrefix = "wspubsub:nk:{"
	nodesKey       = "wspubsub:nodes"
)

func presenceKey(key string) string { return presencePrefix + key + "}" }

func nodeKey(id string) string { return nodePrefix + id + "}" }

func nodeKeysKey(id string) string { return nodeKeysPrefix + id + "}" }

// Batch sizes: keys written per pipeline, and keys swept or reaped per
// round trip.
const (
	writeBatch = 512
	sweepBatch = 500
)

// dropField deletes one node's field of a presence hash when its value
// matches: mode "ne" when its epoch is not ARGV[3], "le" when its epoch is
// at most ARGV[3], "eq" when the value is ARGV[3]. Conditional, so that a
// clean-up racing a node's rewrite never removes the new field.
var dropField = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
local mode, arg = ARGV[2], ARGV[3]
local e = nil
local ok, d = pcall(cjson.decode, v)
if ok and type(d) == 'table' then e = tonumber(d.e) end
local x = tonumber(arg)
if (mode == 'eq' and v == arg) or (mode == 'ne' and e ~= x) or (mode == 'le' and (e == nil or e <= x)) then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0`)

// dropNode removes a dead node from the registry if it has not registered
// again meanwhile (its epoch is still ARGV[2]).
var dropNode = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0`)

// field is a presence hash's value.
type field struct {
	Epoch      int64    `json:"e"`
	Conns      int      `json:"c"`
	Transports []string `json:"t"`
}

// record is a node's registration.
type record struct {
	Node
	Every int64 `json:"heartbeat_ms"` // its heartbeat period
	Epoch int64 `json:"epoch"`
}

// alive: refreshed within two of its heartbeats, by the reader's clock
// (the record's TTL says the same by Redis's; this makes the rule
// testable and holds while Redis has not yet expired a record).
func (r *record) alive(now time.Time) bool {
	return now.Sub(r.Heartbeat) <= 2*time.Duration(r.Every)*time.Millisecond
}

// Redis is cluster presence kept in Redis (see the layout above). Join and
// Leave update memory; Run's goroutine writes changed keys in pipelines of
// up to 512, retrying with backoff, registers the node and heartbeats.
type Redis struct {
	cfg     Config
	rdb     redis.UniversalClient
	c       *counts
	wake    chan struct{}
	started time.Time

	// Run's goroutine only (and tests that drive it by hand).
	epoch   int64 // 0: not registered
	swept   bool  // old fields of this id were swept since registering
	failing bool  // the last write failed (log once per outage)

	ctx       context.Context // Run's work; cancelled by Close's deadline
	abort     context.CancelFunc
	stop      chan struct{}
	stopOnce  sync.Once
	runOnce   sync.Once
	done      chan struct{}
	runCalled chan struct{}
}

// NewRedis returns presence on rdb (a single client or a cluster client).
// It does nothing on the network until Run.
func NewRedis(rdb redis.UniversalClient, cfg Config) *Redis {
	cfg.defaults()
	r := &Redis{cfg: cfg, rdb: rdb, wake: make(chan struct{}, 1), started: cfg.Now(),
		stop: make(chan struct{}), done: make(chan struct{}), runCalled: make(chan struct{})}
	r.c = newCounts(true, r.poke)
	r.ctx, r.abort = context.WithCancel(context.Background())
	return r
}

func (r *Redis) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Join implements Presence; it never waits on Redis.
func (r *Redis) Join(key, transport string) { r.c.change(key, transport, 1) }

// Leave implements Presence; it never waits on Redis.
func (r *Redis) Leave(key, transport string) { r.c.change(key, transport, -1) }

// Run implements Presence.
func (r *Redis) Run(ctx context.Context) {
	r.runOnce.Do(func() { close(r.runCalled) })
	defer close(r.done)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopAbort := context.AfterFunc(r.ctx, cancel)
	defer stopAbort()
	hb := time.NewTicker(r.cfg.Heartbeat)
	defer hb.Stop()
	var retry <-chan time.Time
	attempt := 0
	r.heartbeat(ctx)
	for {
		if retry == nil {
			if err := r.flush(ctx); err != nil {
				retry = time.After(backoff(attempt))
				attempt++
			} else {
				attempt = 0
			}
		}
		select {
		case <-ctx.Done():
			return // no clean-up: the entries go with the heartbeat
		case <-r.stop:
			if err := r.deregister(ctx); err != nil {
				r.cfg.Logger.Warn("presence: deregistering failed; this node's entries expire with its heartbeat", "err", err)
			}
			return
		case <-hb.C:
			r.heartbeat(ctx)
		case <-r.wake:
		case <-retry:
			retry = nil
			if r.epoch == 0 {
				r.heartbeat(ctx)
			}
		}
	}
}

// Close implements Presence.
func (r *Redis) Close(ctx context.Context) error {
	select {
	case <-r.runCalled:
	default:
		return nil // never ran: nothing registered
	}
	r.stopOnce.Do(func() { close(r.stop) })
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		r.abort()
		<-r.done
		return fmt.Errorf("deregistering presence: %w", ctx.Err())
	}
}

func backoff(attempt int) time.Duration {
	return 50*time.Millisecond + time.Duration(rand.Int64N(int64(50*time.Millisecond)<<min(attempt, 7)))
}

func (r *Redis) encode(k *keyState) string {
	e := k.entry("")
	b, _ := json.Marshal(field{Epoch: r.epoch, Conns: e.Conns, Transports: e.Transports})
	return string(b)
}

// flush writes every queued key, in pipelines of writeBatch: HSET of this
// node's field (plus SADD to its key set the first time), or HDEL (plus
// SREM) when the key has no connection left here. On an error what was
// not written stays queued.
func (r *Redis) flush(ctx context.Context) error {
	if r.epoch == 0 {
		return nil // not registered yet: written once it is
	}
	var ws []write
	defer func() { r.cfg.Metrics.PresencePending.Set(float64(r.c.pending())) }()
	for {
		ws = r.c.take(writeBatch, ws[:0], r.encode)
		if len(ws) == 0 {
			return nil
		}
		pipe := r.rdb.Pipeline()
		set := nodeKeysKey(r.cfg.NodeID)
		for _, w := range ws {
			if w.value == "" {
				pipe.HDel(ctx, presenceKey(w.key), r.cfg.NodeID)
				pipe.SRem(ctx, set, w.key)
				continue
			}
			pipe.HSet(ctx, presenceKey(w.key), r.cfg.NodeID, w.value)
			if w.add {
				pipe.SAdd(ctx, set, w.key)
			}
		}
		_, err := pipe.Exec(ctx)
		r.c.done(ws, err == nil)
		if err != nil {
			r.cfg.Metrics.PresenceFlushes.WithLabelValues(metrics.PresenceError).Inc()
			if !r.failing && ctx.Err() == nil {
				r.cfg.Logger.Warn("presence: writing failed; retrying", "keys", len(ws), "err", err)
			}
			r.failing = true
			return fmt.Errorf("writing presence: %w", err)
		}
		r.failing = false
		r.cfg.Metrics.PresenceFlushes.WithLabelValues(metrics.PresenceOK).Inc()
	}
}
