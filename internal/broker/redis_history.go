package broker

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/envelope"
)

//go:embed history.lua
var historyLua string

// HistoryLibrary is the Redis function library (history.lua) with the
// gateway's settings filled in: every gateway on one Redis loads it, and
// must share --history-size, --history-ttl, --history-meta-ttl, --channel
// and --routing.
func HistoryLibrary(cfg HistoryConfig, channel string, routed bool) string {
	ttl := max(cfg.TTL.Milliseconds(), 1)
	slack := max(ttl/8, 1) // see SLACK in history.lua
	return strings.NewReplacer(
		"{{SIZE}}", strconv.Itoa(cfg.Size),
		"{{TTL}}", strconv.FormatInt(ttl, 10),
		"{{SLACK}}", strconv.FormatInt(slack, 10),
		"{{EXPIRE}}", strconv.FormatInt(ttl+slack, 10),
		"{{META_TTL}}", strconv.FormatInt(max(cfg.metaTTL().Milliseconds(), 1), 10),
		"{{CHANNEL}}", luaString(channel),
		"{{ROUTED}}", strconv.FormatBool(routed),
		"{{BROADCAST}}", luaString(BroadcastChannel(channel)),
	).Replace(historyLua)
}

func luaString(s string) string {
	var b strings.Builder
	b.WriteByte('\'')
	for _, c := range []byte(s) {
		if c == '\'' || c == '\\' || c < ' ' || c >= 0x7f {
			fmt.Fprintf(&b, "\\%03d", c)
		} else {
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// StreamKey is the Redis key of key's history. The braces make it a hash
// tag: in a Redis Cluster a key's history lives in one slot.
func StreamKey(key string) string { return "wspubsub:h:{" + key + "}" }

// metaKey is the Redis key of key's meta record (history.lua): its epoch
// and last id, kept HistoryConfig.MetaTTL. Same hash tag as its stream.
func metaKey(key string) string { return "wspubsub:m:{" + key + "}" }

// loadHistory (re)loads the function library. Called before the
// subscription is (re)established: Redis may have restarted without it.
func (r *Redis) loadHistory(ctx context.Context) error {
	if r.cfg.History.Size <= 0 {
		return nil
	}
	lib := HistoryLibrary(r.cfg.History, r.cfg.Inbound, r.cfg.Routed)
	var err error
	if r.cluster != nil {
		// Every master serves some keys' calls; replicas get it replicated.
		err = r.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.FunctionLoadReplace(ctx, lib).Err()
		})
	} else {
		err = r.client.FunctionLoadReplace(ctx, lib).Err()
	}
	if err != nil {
		return fmt.Errorf("loading the history functions into Redis: %w", err)
	}
	if r.persistenceChecked.CompareAndSwap(false, true) {
		r.checkPersistence(ctx)
	}
	return nil
}

// checkPersistence warns when a Redis crash would lose acknowledged
// messages without a trace (README "Delivery guarantees"): only an
// append-only file written before each answer keeps them. Once per
// process, when the history functions are first loaded.
func (r *Redis) checkPersistence(ctx context.Context) {
	check := func(ctx context.Context, c *redis.Client) error {
		if problem, err := persistenceProblem(ctx, c); err != nil {
			r.cfg.Logger.Warn("history: could not check Redis persistence (CONFIG GET refused): unless Redis runs with appendonly yes and appendfsync always, a Redis crash loses acknowledged messages silently (README \"Delivery guarantees\")",
				"addr", c.Options().Addr, "err", err)
		} else if problem != "" {
			r.cfg.Logger.Warn("history: a Redis crash would lose acknowledged messages silently (resuming clients get no gap): "+problem+"; exactly-once needs appendonly yes and appendfsync always (README \"Delivery guarantees\")",
				"addr", c.Options().Addr)
		}
		return nil
	}
	if r.cluster != nil {
		_ = r.cluster.ForEachMaster(ctx, check)
	} else if c, ok := r.client.(*redis.Client); ok {
		_ = check(ctx, c)
	}
}

// persistenceProblem says what a crash of c would lose of what it
// acknowledged ("" for nothing), from its CONFIG.
func persistenceProblem(ctx context.Context, c *redis.Client) (string, error) {
	cfg, err := c.ConfigGet(ctx, "append*").Result()
	if err != nil {
		return "", fmt.Errorf("reading the persistence settings of Redis: %w", err)
	}
	switch {
	case cfg["appendonly"] != "yes":
		return "appendonly " + cfg["appendonly"] + " (only the last RDB snapshot, if any, survives)", nil
	case cfg["appendfsync"] != "always":
		return "appendfsync " + cfg["appendfsync"] + " (about the last second is lost)", nil
	}
	return "", nil
}

// fcall runs a history function, loading the library once if Redis does
// not have it (a restart that lost it, or a Redis no gateway set up yet).
func (r *Redis) fcall(ctx context.Context, fn string, keys []string, args ...any) (any, error) {
	v, err := r.client.FCall(ctx, fn, keys, args...).Result()
	if err != nil && strings.Contains(err.Error(), "Function not found") {
		if lerr := r.loadHistory(ctx); lerr != nil {
			return nil, lerr
		}
		v, err = r.client.FCall(ctx, fn, keys, args...).Result()
	}
	return v, err
}

// Record implements History with one FCALL wspubsub_publish, or
// wspubsub_publish_batch with the messages of concurrent calls (see
// recordQueue); in a Redis Cluster, one per hash slot of the recipients
// (see recordInSlots).
func (r *Redis) Record(ctx context.Context, msg []byte, idem string) (Recorded, error) {
	if r.cluster != nil {
		return r.recordInSlots(ctx, msg, idem)
	}
	return r.records.record(ctx, r, msg, idem)
}

func parseRecorded(v any) (Recorded, error) {
	list, ok := v.([]any)
	if !ok || len(list) == 0 {
		return Recorded{}, fmt.Errorf("recording a message in Redis: unexpected answer %v", v)
	}
	out := Recorded{Duplicate: list[0] == int64(1)}
	for _, x := range list[1:] {
		s, _ := x.(string)
		out.IDs = append(out.IDs, s)
	}
	return out, nil
}

// recordInSlots records msg in a Redis Cluster: a function call may touch
// one hash slot only, so the recipients are grouped by slot and each group
// is recorded (and published) by its own call, naming the group's history
// keys; the calls go out in one pipeline. Each group is atomic, the whole
// is not: a failure answers an error and the publisher's retry with the
// same idempotency key records only the groups that had failed (each
// group keeps its own idempotency record). A broadcast has no key: it is
// published live on the broadcast channel.
func (r *Redis) recordInSlots(ctx context.Context, msg []byte, idem string) (Recorded, error) {
	var p envelope.Parser
	env, err := p.Parse(msg)
	if err != nil {
		return Recorded{}, fmt.Errorf("recording a message in Redis: %w", err)
	}
	if env.Broadcast {
		return Recorded{}, r.Deliver(ctx, []Routed{{Broadcast: true, Payload: msg}})
	}
	groups := map[uint16][]int{} // slot → indexes into env.Recipients
	var order []uint16
	for i, k := range env.Recipients {
		s := Slot(StreamKey(string(k)))
		if groups[s] == nil {
			order = append(order, s)
		}
		groups[s] = append(groups[s], i)
	}
	if err := r.loadHistoryOnce(ctx); err != nil {
		return Recorded{}, err
	}
	out := Recorded{Duplicate: true, IDs: make([]string, len(env.Recipients))}
	pending := order
	for attempt := 0; len(pending) > 0; attempt++ {
		cmds := r.recordOnMasters(ctx, pending, func(s uint16) []string {
			keys := make([]string, len(groups[s]))
			for j, i := range groups[s] {
				keys[j] = StreamKey(string(env.Recipients[i]))
			}
			return keys
		}, msg, idem)
		var failed []uint16
		var firstErr error
		for gi, s := range pending {
			if err := cmds[gi].Err(); err != nil {
				failed = append(failed, s)
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			rec, err := parseRecorded(cmds[gi].Val())
			if err != nil {
				return Recorded{}, err
			}
			out.Duplicate = out.Duplicate && rec.Duplicate
			for j, i := range groups[s] {
				if j < len(rec.IDs) {
					out.IDs[i] = rec.IDs[j]
				}
			}
		}
		if firstErr == nil {
			break
		}
		// A master that lost the functions (restarted, or promoted before
		// they reached it): load them everywhere and retry what failed.
		if attempt > 0 || !strings.Contains(firstErr.Error(), "Function not found") {
			return Recorded{}, fmt.Errorf("recording a message in %d of %d slots of the Redis Cluster: %w", len(failed), len(order), firstErr)
		}
		if err := r.loadHistory(ctx); err != nil {
			return Recorded{}, err
		}
		pending = failed
	}
	return out, nil
}

// recordOnMasters runs one FCALL wspubsub_publish per slot, in one
// pipeline per master (on one connection: with WaitReplicas, the WAIT at
// its end covers its calls), the masters in parallel. cmds[i] is slot
// i's call; a master that cannot be reached fails its calls.
func (r *Redis) recordOnMasters(ctx context.Context, slots []uint16, keysOf func(uint16) []string, msg []byte, idem string) []*redis.Cmd {
	cmds := make([]*redis.Cmd, len(slots))
	byNode := map[*redis.Client][]int{}
	for i, s := range slots {
		keys := keysOf(s)
		cmds[i] = redis.NewCmd(ctx, "fcall", "wspubsub_publish", len(keys))
		node, err := r.cluster.MasterForKey(ctx, keys[0])
		if err != nil {
			cmds[i].SetErr(fmt.Errorf("finding the master of a key's slot: %w", err))
			continue
		}
		byNode[node] = append(byNode[node], i)
	}
	var wg sync.WaitGroup
	for node, idx := range byNode {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var wait *redis.Cmd
			_, err := node.Pipelined(ctx, func(pl redis.Pipeliner) error {
				for _, i := range idx {
					cmds[i] = pl.FCall(ctx, "wspubsub_publish", keysOf(slots[i]), msg, idem)
				}
				if n := r.cfg.WaitReplicas; n > 0 {
					wait = pl.Do(ctx, "wait", n, r.cfg.WaitTimeout.Milliseconds())
				}
				return nil
			})
			if err == nil && wait != nil {
				if got, _ := wait.Int64(); got < int64(r.cfg.WaitReplicas) {
					err = fmt.Errorf("recorded on %d replicas of the master, not %d", got, r.cfg.WaitReplicas)
					for _, i := range idx {
						cmds[i].SetErr(err)
					}
				}
			}
			if err != nil {
				r.cluster.ReloadState(ctx) // a failover or a slot that moved
			}
		}()
	}
	wg.Wait()
	return cmds
}

// loadHistoryOnce loads the function library unless this broker has.
func (r *Redis) loadHistoryOnce(ctx context.Context) error {
	if r.loaded.Load() {
		return nil
	}
	if err := r.loadHistory(ctx); err != nil {
		return err
	}
	r.loaded.Store(true)
	return nil
}

// Since implements History with one FCALL wspubsub_since.
func (r *Redis) Since(ctx context.Context, key, since string) (Replay, error) {
	v, err := r.fcall(ctx, "wspubsub_since", []string{StreamKey(key)}, since)
	if err != nil {
		return Replay{}, fmt.Errorf("reading a key's history from Redis: %w", err)
	}
	return parseReplay(v)
}

// parseReplay reads wspubsub_since's answer: gap, top, then (id, kind,
// value) per entry, where kind "m" is a whole message (its payload is
// taken here) and "p" a payload.
func parseReplay(v any) (Replay, error) {
	list, ok := v.([]any)
	if !ok || len(list) < 2 || (len(list)-2)%3 != 0 {
		return Replay{}, errors.New("reading a key's history from Redis: unexpected answer")
	}
	top, _ := list[1].(string)
	out := Replay{Gap: list[0] == int64(1), Top: top, Entries: make([]Entry, 0, (len(list)-2)/3)}
	var parser envelope.Parser
	for i := 2; i < len(list); i += 3 {
		id, _ := list[i].(string)
		kind, _ := list[i+1].(string)
		val, _ := list[i+2].(string)
		p := []byte(val)
		if kind == "m" {
			// A message recorded by FCALL that the gateway's parser refuses
			// (FCALL checks less) is dropped on replay as it was live:
			// an empty payload, which the hub counts.
			env, err := parser.Parse(p)
			p = nil
			if err == nil {
				p = env.Payload
			}
		}
		out.Entries = append(out.Entries, Entry{ID: id, Payload: p})
	}
	return out, nil
}
