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

// memStream is one key's history and its meta record (the epoch and the
// last id given), which outlives the entries: see history.lua.
type memStream struct {
	epoch       string
	last        envelope.ID // "<epoch>.0-0" before any message
	entries     []memEntry  // oldest first, at most cfg.Size
	expires     time.Time   // the entries' (the stream's)
	metaExpires time.Time   // the record's
}

type memEntry struct {
	Entry
	id, prev envelope.ID // prev: the entry before it ("<epoch>.0-0" for the first)
	at       time.Time
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
	if err := m.Publish(ctx, m.recorded, withIDs(msg, ids)); err != nil {
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

// record returns key's record, a new one (a new epoch) when it has none
// or it expired, and drops its entries when they expired.
func (h *memHistory) record(key string, now time.Time) *memStream {
	s := h.keys[key]
	if s == nil || now.After(s.metaExpires) { // expired, maybe not swept yet: a new life
		h.epochs++
		e := strconv.FormatInt(now.UnixMicro(), 36) + strconv.FormatUint(h.epochs, 36)
		s = &memStream{epoch: e, last: envelope.ID{Epoch: e}}
		h.keys[key] = s
	}
	if now.After(s.expires) {
		s.entries = nil
	}
	return s
}

func (h *memHistory) append(key string, payload []byte, now time.Time) string {
	s := h.record(key, now)
	id := envelope.ID{Epoch: s.epoch, Ms: uint64(now.UnixMilli())}
	if id.Ms <= s.last.Ms {
		id.Ms, id.Seq = s.last.Ms, s.last.Seq+1
	}
	s.entries = append(s.entries, memEntry{Entry: Entry{ID: id.String(), Payload: payload}, id: id, prev: s.last, at: now})
	s.last = id
	cut := max(len(s.entries)-h.cfg.Size, 0)
	for cut < len(s.entries)-1 && now.Sub(s.entries[cut].at) > h.cfg.TTL {
		cut++
	}
	if cut > 0 {
		s.entries = append(s.entries[:0:0], s.entries[cut:]...)
	}
	s.expires = now.Add(h.cfg.TTL)
	s.metaExpires = now.Add(h.cfg.metaTTL())
	return id.String()
}

// sweep drops expired histories, meta records and idempotency keys (under
// mu).
func (h *memHistory) sweep(now time.Time) {
	for k, s := range h.keys {
		switch {
		case now.After(s.metaExpires):
			delete(h.keys, k)
		case now.After(s.expires):
			s.entries = nil
		}
	}
	for k, v := range h.idem {
		if now.After(v.expires) {
			delete(h.idem, k)
		}
	}
}

// Since implements History, with history.lua's rules.
func (m *Memory) Since(_ context.Context, key, since string) (Replay, error) {
	h := m.hist
	if h == nil {
		return Replay{}, errors.New("in-process broker keeps no history")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	s := h.keys[key]
	if s != nil && now.After(s.metaExpires) {
		delete(h.keys, key)
		s = nil
	}
	if s == nil {
		if since == "" {
			// A real position, so that what is published after it and
			// then expires is a gap for a client resuming from it.
			s = h.record(key, now)
			s.metaExpires = now.Add(h.cfg.metaTTL())
			return Replay{Top: s.last.String()}, nil
		}
		return Replay{Gap: since != "0", Top: "0"}, nil
	}
	s.metaExpires = now.Add(h.cfg.metaTTL()) // a resume keeps the record
	out := Replay{Top: s.last.String()}
	if since == "" {
		return out, nil
	}
	// Held: younger than the TTL. With nothing held, everything up to the
	// last id is gone, and the next entry will name it as its predecessor.
	var held []memEntry
	if !now.After(s.expires) {
		held = s.entries
		for len(held) > 0 && now.Sub(held[0].at) > h.cfg.TTL {
			held = held[1:]
		}
	}
	prev := s.last
	if len(held) > 0 {
		prev = held[0].prev
	}
	from, ok := envelope.ParseID(since)
	switch {
	case !ok:
		out.Gap = true
	case from.Epoch == "": // "0": everything
		out.Gap = prev.Ms != 0 || prev.Seq != 0
	case from.Epoch != s.epoch || prev.After(from) || from.After(s.last):
		// After the last id: the history lost what the client got.
		out.Gap = true
	}
	if out.Gap {
		from = envelope.ID{}
	}
	for _, e := range held {
		if e.id.After(from) {
			out.Entries = append(out.Entries, e.Entry)
		}
	}
	return out, nil
}
