package broker

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/wspubsub/wspubsub/internal/envelope"
)

// memHistory is the in-process History: the same contract and ids as the
// Redis functions, kept in this process (it dies with it).
type memHistory struct {
	cfg    HistoryConfig
	now    func() time.Time
	mu     sync.Mutex // also orders record-then-publish, like Redis's one thread
	keys   map[string]*memStream
	idem   map[string]memIdem
	parser envelope.Parser
	epochs uint64
	swept  time.Time // the last sweep of expired keys
}

type memStream struct {
	epoch   string
	entries []Entry // oldest first, at most cfg.Size
	times   []time.Time
	ids     []envelope.ID
	maxDel  envelope.ID // the newest id trimmed, zero when none
	lastMs  uint64
	lastSeq uint64
	expires time.Time
}

type memIdem struct {
	ids     []string
	expires time.Time
}

// WithHistory turns on m's per-key history; m then implements History.
func (m *Memory) WithHistory(cfg HistoryConfig) *Memory {
	m.hist = &memHistory{cfg: cfg, now: time.Now, keys: map[string]*memStream{}, idem: map[string]memIdem{}}
	return m
}

// History returns m's History, or nil when it keeps none.
func (m *Memory) History() History {
	if m.hist == nil {
		return nil
	}
	return m
}

// Record implements History.
func (m *Memory) Record(ctx context.Context, msg []byte, idem string) (Recorded, error) {
	h := m.hist
	if h == nil {
		return Recorded{}, errors.New("in-process broker keeps no history")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	if now.Sub(h.swept) >= time.Second {
		h.sweep(now) // a walk over every key: not on each publish
		h.swept = now
	}
	env, err := h.parser.Parse(msg)
	if err != nil {
		return Recorded{}, err
	}
	if env.Broadcast {
		return Recorded{}, m.Publish(ctx, m.inbound, msg)
	}
	var ikey string
	if idem != "" {
		ikey = string(env.Recipients[0]) + "\x00" + idem
		if prev, ok := h.idem[ikey]; ok && !now.After(prev.expires) {
			return Recorded{IDs: prev.ids, Duplicate: true}, nil
		}
	}
	ids := make([]string, len(env.Recipients))
	seen := map[string]string{}
	for i, r := range env.Recipients {
		k := string(r)
		if seen[k] == "" {
			seen[k] = h.append(k, env.Payload, now)
		}
		ids[i] = seen[k]
	}
	if err := m.Publish(ctx, m.inbound, withIDs(msg, ids)); err != nil {
		return Recorded{}, err
	}
	if ikey != "" {
		h.idem[ikey] = memIdem{ids, now.Add(h.cfg.TTL)}
	}
	return Recorded{IDs: ids}, nil
}

// withIDs prefixes an envelope with its "wspubsub_ids" member, as the Redis
// function does.
func withIDs(msg []byte, ids []string) []byte {
	out := append([]byte(nil), `{"wspubsub_ids":[`...)
	for i, id := range ids {
		if i > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendQuote(out, id)
	}
	out = append(out, "],"...)
	i := 0
	for msg[i] != '{' {
		i++
	}
	return append(out, msg[i+1:]...)
}

func (h *memHistory) append(key string, payload []byte, now time.Time) string {
	s := h.keys[key]
	if s == nil || now.After(s.expires) { // expired, maybe not swept yet: a new life
		h.epochs++
		s = &memStream{epoch: strconv.FormatInt(now.UnixMicro(), 36) + strconv.FormatUint(h.epochs, 36)}
		h.keys[key] = s
	}
	ms := uint64(now.UnixMilli())
	if ms > s.lastMs {
		s.lastMs, s.lastSeq = ms, 0
	} else {
		s.lastSeq++
	}
	id := envelope.ID{Epoch: s.epoch, Ms: s.lastMs, Seq: s.lastSeq}
	s.entries = append(s.entries, Entry{ID: id.String(), Payload: payload})
	s.ids = append(s.ids, id)
	s.times = append(s.times, now)
	cut := max(len(s.entries)-h.cfg.Size, 0)
	for cut < len(s.entries)-1 && now.Sub(s.times[cut]) > h.cfg.TTL {
		cut++
	}
	if cut > 0 {
		s.maxDel = s.ids[cut-1]
		s.entries = append(s.entries[:0:0], s.entries[cut:]...)
		s.ids = append(s.ids[:0:0], s.ids[cut:]...)
		s.times = append(s.times[:0:0], s.times[cut:]...)
	}
	s.expires = now.Add(h.cfg.TTL)
	return id.String()
}

// sweep drops expired histories and idempotency keys (under mu).
func (h *memHistory) sweep(now time.Time) {
	for k, s := range h.keys {
		if now.After(s.expires) {
			delete(h.keys, k)
		}
	}
	for k, v := range h.idem {
		if now.After(v.expires) {
			delete(h.idem, k)
		}
	}
}

// Since implements History.
func (m *Memory) Since(_ context.Context, key, since string) (Replay, error) {
	h := m.hist
	if h == nil {
		return Replay{}, errors.New("in-process broker keeps no history")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.keys[key]
	if s != nil && h.now().After(s.expires) {
		delete(h.keys, key)
		s = nil
	}
	if s == nil {
		return Replay{Gap: since != "" && since != "0", Top: "0"}, nil
	}
	out := Replay{Top: s.entries[len(s.entries)-1].ID}
	if since == "" {
		return out, nil
	}
	from, ok := envelope.ParseID(since)
	switch {
	case !ok || (from.Epoch != "" && from.Epoch != s.epoch):
		out.Gap = true
		from = envelope.ID{}
	case s.maxDel.Epoch != "" && s.maxDel.After(from):
		out.Gap = true
		from = envelope.ID{}
	}
	for i, id := range s.ids {
		if id.After(from) {
			out.Entries = append(out.Entries, s.entries[i])
		}
	}
	return out, nil
}
