package hub

import (
	"container/heap"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/session"
)

// expiries orders the sessions whose credential expires by that time, so
// one hub-level timer closes them instead of one timer per connection. A
// session refreshed with a fresh token gets a new entry; the old one is
// dropped when it comes due (the session's own Expires says which is
// current), as are entries of sessions that already ended.
type expiries struct {
	mu   sync.Mutex
	q    expHeap
	wake chan struct{} // an earlier deadline was added
	// stale counts entries made stale since the last compaction (their
	// session ended or was refreshed): past half the heap, add sweeps
	// them, so churn with long-lived tokens does not keep ended sessions.
	stale int
	// grow is the heap size that triggers a compaction whatever stale
	// says (twice what the last one kept): entries of sessions refused
	// after their expiry was queued are not all counted stale (a resume
	// whose history cannot be read), and must not pile up until their exp.
	grow int
}

type expEntry struct {
	at time.Time
	s  *session.Session
}

type expHeap []expEntry

func (q expHeap) Len() int           { return len(q) }
func (q expHeap) Less(i, j int) bool { return q[i].at.Before(q[j].at) }
func (q expHeap) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *expHeap) Push(x any)        { *q = append(*q, x.(expEntry)) }
func (q *expHeap) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = expEntry{}
	*q = old[:len(old)-1]
	return e
}

func (e *expiries) init() { e.wake = make(chan struct{}, 1) }

// add schedules s's close at at.
func (e *expiries) add(s *session.Session, at time.Time) {
	e.mu.Lock()
	if e.stale > 1024 && e.stale > len(e.q)/2 || len(e.q) >= max(e.grow, minCompact) {
		e.compact()
	}
	heap.Push(&e.q, expEntry{at, s})
	first := e.q[0].s == s && e.q[0].at.Equal(at)
	e.mu.Unlock()
	if first {
		select {
		case e.wake <- struct{}{}:
		default:
		}
	}
}

// compact drops the entries no longer current (under mu).
func (e *expiries) compact() {
	kept := e.q[:0]
	for _, x := range e.q {
		if !x.s.IsClosed() && x.s.Expires().Equal(x.at) {
			kept = append(kept, x)
		}
	}
	clear(e.q[len(kept):])
	e.q = kept
	heap.Init(&e.q)
	e.stale = 0
	e.grow = 2 * len(kept)
}

// minCompact is the smallest heap that a growth-triggered compaction
// sweeps.
const minCompact = 1024

// outdated counts one entry made stale (a session ended or refreshed).
func (e *expiries) outdated() {
	e.mu.Lock()
	e.stale++
	e.mu.Unlock()
}

// next is the earliest deadline, or false.
func (e *expiries) next() (time.Time, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.q) == 0 {
		return time.Time{}, false
	}
	return e.q[0].at, true
}

// due pops the entries due at now.
func (e *expiries) due(now time.Time) []*session.Session {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*session.Session
	for len(e.q) > 0 && !e.q[0].at.After(now) {
		out = append(out, heap.Pop(&e.q).(expEntry).s)
	}
	return out
}

// runExpiry closes sessions when their credential expires, until ctx ends.
// Precision: the timer's, a few milliseconds after the credential's exp.
func (h *Hub) runExpiry(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		wait := time.Hour
		if at, ok := h.expiry.next(); ok {
			wait = max(0, time.Until(at))
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-h.expiry.wake:
		case <-t.C:
			h.expire(time.Now())
		}
	}
}

// expire closes, with CloseRevoked, every session whose credential has
// expired at now and that presented no fresh one since.
func (h *Hub) expire(now time.Time) {
	for _, s := range h.expiry.due(now) {
		exp := s.Expires()
		if s.IsClosed() || exp.IsZero() || exp.After(now) || !h.registered(s) {
			continue // gone, refused, or refreshed (its newer entry is queued)
		}
		h.m.Revocations.Inc()
		h.log.Info("credential expired; connection closed", "key", keystore.Redact(s.Key), "conn", s.ID, "transport", s.Transport)
		s.Close(session.CloseRevoked, "token expired")
	}
}

// registered reports whether s is in the registry (admitted, not left).
func (h *Hub) registered(s *session.Session) bool {
	sh := h.shardOf([]byte(s.Key))
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return slices.Contains(sh.keys[s.Key], s)
}
