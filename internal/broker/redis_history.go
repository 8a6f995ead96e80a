package broker

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/wspubsub/wspubsub/internal/envelope"
)

//go:embed history.lua
var historyLua string

// HistoryLibrary is the Redis function library (history.lua) with the
// gateway's settings filled in: every gateway on one Redis loads it, and
// must share --history-size, --history-ttl and --channel.
func HistoryLibrary(cfg HistoryConfig, channel string) string {
	return strings.NewReplacer(
		"{{SIZE}}", strconv.Itoa(cfg.Size),
		"{{TTL}}", strconv.FormatInt(max(cfg.TTL.Milliseconds(), 1), 10),
		"{{CHANNEL}}", luaString(channel),
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

// loadHistory (re)loads the function library. Called before the
// subscription is (re)established: Redis may have restarted without it.
func (r *Redis) loadHistory(ctx context.Context) error {
	if r.cfg.History.Size <= 0 {
		return nil
	}
	err := r.client.FunctionLoadReplace(ctx, HistoryLibrary(r.cfg.History, r.cfg.Inbound)).Err()
	if err != nil {
		return fmt.Errorf("loading the history functions into Redis: %w", err)
	}
	return nil
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

// Record implements History with one FCALL wspubsub_publish.
func (r *Redis) Record(ctx context.Context, msg []byte, idem string) (Recorded, error) {
	v, err := r.fcall(ctx, "wspubsub_publish", nil, msg, idem)
	if err != nil {
		return Recorded{}, fmt.Errorf("recording a message in Redis: %w", err)
	}
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
