package presence

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/redis/go-redis/v9"
)

// Reading presence from Redis: a key's fields, counted only for live
// nodes of the right epoch; stale ones met are dropped (layout: redis.go).

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
