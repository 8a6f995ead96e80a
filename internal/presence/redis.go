package presence

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
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
func nodeKey(id string) string      { return nodePrefix + id + "}" }
func nodeKeysKey(id string) string  { return nodeKeysPrefix + id + "}" }

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

func (r *Redis) heartbeat(ctx context.Context) {
	if err := r.beat(ctx); err != nil {
		r.cfg.Metrics.PresenceHeartbeats.WithLabelValues(metrics.PresenceError).Inc()
		if ctx.Err() == nil {
			r.cfg.Logger.Warn("presence: heartbeat failed", "node", r.cfg.NodeID, "err", err)
		}
		return
	}
	r.cfg.Metrics.PresenceHeartbeats.WithLabelValues(metrics.PresenceOK).Inc()
}

func (r *Redis) record(epoch int64) (string, error) {
	now := r.cfg.Now()
	b, err := json.Marshal(record{Node: Node{ID: r.cfg.NodeID, Addr: r.cfg.Addr(), Conns: r.conns(),
		Version: r.cfg.Version, Started: r.started, Heartbeat: now},
		Every: r.cfg.Heartbeat.Milliseconds(), Epoch: epoch})
	return string(b), err
}

// beat refreshes this node's record (one SET XX with the TTL, one HSET in
// the registry), registering anew when the record is gone; then reaps a
// dead node's leftovers, a bounded amount.
func (r *Redis) beat(ctx context.Context) error {
	if r.epoch == 0 || r.c.needsResync() {
		return r.register(ctx)
	}
	rec, err := r.record(r.epoch)
	if err != nil {
		return fmt.Errorf("encoding the node record: %w", err)
	}
	pipe := r.rdb.Pipeline()
	set := pipe.SetArgs(ctx, nodeKey(r.cfg.NodeID), rec, redis.SetArgs{Mode: "XX", TTL: 2 * r.cfg.Heartbeat, Get: true})
	pipe.HSet(ctx, nodesKey, r.cfg.NodeID, r.epoch)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("refreshing the node record: %w", err)
	}
	if errors.Is(set.Err(), redis.Nil) {
		// Gone: Redis lost it or this node stalled past its TTL, and
		// readers may have dropped its fields. Start a new epoch.
		r.cfg.Logger.Warn("presence: node record was gone; registering again", "node", r.cfg.NodeID)
		return r.register(ctx)
	}
	var prev record
	if json.Unmarshal([]byte(set.Val()), &prev) == nil && prev.Epoch != r.epoch {
		// Another process wrote this id's record since our last beat.
		r.cfg.Logger.Warn("presence: another gateway uses the same --node-id; presence answers for it are wrong until one is renamed",
			"node", r.cfg.NodeID, "other_addr", prev.Addr)
	}
	if !r.swept {
		if err := r.sweep(ctx); err != nil {
			return err
		}
	}
	if err := r.reap(ctx); err != nil && ctx.Err() == nil {
		r.cfg.Logger.Debug("presence: reaping a dead node's entries failed", "err", err)
	}
	return nil
}

// register starts a new epoch: records the node, queues every live key to
// be written again, and sweeps the fields of earlier epochs.
func (r *Redis) register(ctx context.Context) error {
	epoch := max(r.cfg.Now().UnixMilli(), r.epoch+1)
	rec, err := r.record(epoch)
	if err != nil {
		return fmt.Errorf("encoding the node record: %w", err)
	}
	pipe := r.rdb.Pipeline()
	pipe.Set(ctx, nodeKey(r.cfg.NodeID), rec, 2*r.cfg.Heartbeat)
	pipe.HSet(ctx, nodesKey, r.cfg.NodeID, epoch)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("registering node %q: %w", r.cfg.NodeID, err)
	}
	first := r.epoch == 0
	r.epoch, r.swept = epoch, false
	r.c.resync()
	r.cfg.Metrics.PresenceResyncs.Inc()
	if first {
		r.cfg.Logger.Info("presence: node registered", "node", r.cfg.NodeID, "addr", r.cfg.Addr(), "heartbeat", r.cfg.Heartbeat)
	}
	r.poke()
	return r.sweep(ctx)
}

// sweep removes this node's fields of earlier epochs (a previous process
// with the same id, or keys let go while Redis was unreachable) through
// its key set, and forgets keys that are not live any more. Run's writes
// come after it, on the same goroutine.
func (r *Redis) sweep(ctx context.Context) error {
	set := nodeKeysKey(r.cfg.NodeID)
	epoch := strconv.FormatInt(r.epoch, 10)
	var cursor uint64
	for {
		members, next, err := r.rdb.SScan(ctx, set, cursor, "", sweepBatch).Result()
		if err != nil {
			return fmt.Errorf("sweeping old presence fields: %w", err)
		}
		if len(members) > 0 {
			pipe := r.rdb.Pipeline()
			var gone []any
			for _, k := range members {
				dropField.Eval(ctx, pipe, []string{presenceKey(k)}, r.cfg.NodeID, "ne", epoch)
				if !r.c.live(k) {
					gone = append(gone, k)
				}
			}
			if len(gone) > 0 {
				pipe.SRem(ctx, set, gone...)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return fmt.Errorf("sweeping old presence fields: %w", err)
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	r.swept = true
	return nil
}

// reap samples two registered node ids; for one whose record is gone it
// removes up to 500 of its fields (those of its last epoch or older) and,
// once its key set is empty, its registry entry. Cost per heartbeat: O(1).
func (r *Redis) reap(ctx context.Context) error {
	sample, err := r.rdb.HRandFieldWithValues(ctx, nodesKey, 2).Result()
	if err != nil {
		return err
	}
	for _, kv := range sample {
		if kv.Key == r.cfg.NodeID {
			continue
		}
		n, err := r.rdb.Exists(ctx, nodeKey(kv.Key)).Result()
		if err != nil {
			return err
		}
		if n > 0 {
			continue // alive
		}
		keys, err := r.rdb.SPopN(ctx, nodeKeysKey(kv.Key), sweepBatch).Result()
		if err != nil {
			return err
		}
		pipe := r.rdb.Pipeline()
		for _, k := range keys {
			dropField.Eval(ctx, pipe, []string{presenceKey(k)}, kv.Key, "le", kv.Value)
		}
		if len(keys) < sweepBatch {
			dropNode.Eval(ctx, pipe, []string{nodesKey}, kv.Key, kv.Value)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		r.cfg.Metrics.PresenceReaped.Add(float64(len(keys)))
		r.cfg.Logger.Debug("presence: reaped a dead node's entries", "node", kv.Key, "keys", len(keys))
		return nil
	}
	return nil
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

// deregister removes this node at a graceful stop: its fields (through its
// key set), the set, its record and its registry entry.
func (r *Redis) deregister(ctx context.Context) error {
	if r.epoch == 0 {
		return nil
	}
	set := nodeKeysKey(r.cfg.NodeID)
	var cursor uint64
	for {
		members, next, err := r.rdb.SScan(ctx, set, cursor, "", sweepBatch).Result()
		if err != nil {
			return fmt.Errorf("deregistering: reading the key set: %w", err)
		}
		if len(members) > 0 {
			pipe := r.rdb.Pipeline()
			for _, k := range members {
				pipe.HDel(ctx, presenceKey(k), r.cfg.NodeID)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return fmt.Errorf("deregistering: removing fields: %w", err)
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	pipe := r.rdb.Pipeline()
	pipe.Del(ctx, set)
	pipe.Del(ctx, nodeKey(r.cfg.NodeID))
	dropNode.Eval(ctx, pipe, []string{nodesKey}, r.cfg.NodeID, strconv.FormatInt(r.epoch, 10))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("deregistering node %q: %w", r.cfg.NodeID, err)
	}
	r.epoch = 0
	return nil
}

// Lookup implements Presence: one pipeline of HGETALL (one per key), one
// of GET (one per node met), and a pipeline of conditional deletes of the
// stale fields met, if any.
func (r *Redis) Lookup(ctx context.Context, keys []string) (map[string][]Entry, error) {
	pipe := r.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HGetAll(ctx, presenceKey(k))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("%w: reading presence: %w", ErrUnavailable, err)
	}
	var ids []string
	for _, c := range cmds {
		for id := range c.Val() {
			ids = append(ids, id)
		}
	}
	recs, err := r.records(ctx, ids)
	if err != nil {
		return nil, err
	}
	now := r.cfg.Now()
	out := map[string][]Entry{}
	var stale []staleField
	for i, c := range cmds {
		for id, v := range c.Val() {
			var f field
			rec := recs[id]
			if json.Unmarshal([]byte(v), &f) == nil && rec != nil && rec.Epoch == f.Epoch {
				if rec.alive(now) && f.Conns > 0 {
					out[keys[i]] = append(out[keys[i]], Entry{Node: id, Conns: f.Conns, Transports: f.Transports})
				}
				continue
			}
			if rec == nil || rec.Epoch != f.Epoch {
				// Its node is gone, or registered again since.
				stale = append(stale, staleField{keys[i], id, v})
			}
		}
	}
	for _, es := range out {
		slices.SortFunc(es, func(a, b Entry) int { return cmp.Compare(a.Node, b.Node) })
	}
	r.dropStale(ctx, stale)
	return out, nil
}

type staleField struct{ key, node, value string }

// dropStale deletes fields a reader found stale, each only if unchanged.
// Best effort: the reaper and the nodes' own sweeps catch what is missed.
func (r *Redis) dropStale(ctx context.Context, stale []staleField) {
	if len(stale) == 0 {
		return
	}
	pipe := r.rdb.Pipeline()
	for _, s := range stale {
		dropField.Eval(ctx, pipe, []string{presenceKey(s.key)}, s.node, "eq", s.value)
	}
	_, _ = pipe.Exec(ctx)
}

// records reads the records of ids (distinct or not); absent ones (expired)
// are missing from the map.
func (r *Redis) records(ctx context.Context, ids []string) (map[string]*record, error) {
	slices.Sort(ids)
	ids = slices.Compact(ids)
	recs := make(map[string]*record, len(ids))
	if len(ids) == 0 {
		return recs, nil
	}
	pipe := r.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.Get(ctx, nodeKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%w: reading node records: %w", ErrUnavailable, err)
	}
	for i, c := range cmds {
		var rec record
		if c.Err() == nil && json.Unmarshal([]byte(c.Val()), &rec) == nil {
			recs[ids[i]] = &rec
		}
	}
	return recs, nil
}

// Nodes implements Presence: the registry (HKEYS) and one GET per node.
// Entries of dead nodes are left for the reaper, which removes them once it
// has removed their fields.
func (r *Redis) Nodes(ctx context.Context) ([]Node, error) {
	ids, err := r.rdb.HKeys(ctx, nodesKey).Result()
	if err != nil {
		return nil, fmt.Errorf("%w: reading the node registry: %w", ErrUnavailable, err)
	}
	recs, err := r.records(ctx, ids)
	if err != nil {
		return nil, err
	}
	now := r.cfg.Now()
	out := []Node{}
	for _, rec := range recs {
		if rec.alive(now) {
			out = append(out, rec.Node)
		}
	}
	slices.SortFunc(out, func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

func (r *Redis) conns() int { return connsOf(&r.cfg, r.c) }
