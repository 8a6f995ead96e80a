package presence

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/metrics"
)

// The node registry in Redis: this node's record and heartbeat, its
// (de)registration, the clean-up of dead nodes' leftovers, and reading
// the records (layout: redis.go).

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
