package hub

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// A drain (a deploy) hands this node's clients to the other nodes a few at
// a time: every session is closed with CloseServiceRestart, in batches
// spread over a period, so that the nodes taking them over see a steady
// trickle of reconnects (each with its since=, losing nothing) instead of
// a storm; new sessions are refused with the same code meanwhile.

// Drain pacing: a batch every drainStep at the most, and at most
// maxDrainSteps batches (a long period gets longer steps instead).
const (
	drainStep     = 100 * time.Millisecond
	maxDrainSteps = 1000
)

// DrainSteps is the number of batches a drain over period closes sessions
// in: one per 100 ms, between 1 and 1,000.
func DrainSteps(period time.Duration) int {
	return int(min(max(period/drainStep, 1), maxDrainSteps))
}

// Pacer paces a drain: it returns when the next batch is due, or an error
// when the drain must stop pacing (ctx ended). Drain calls it from its own
// goroutine, between batches, so a test's Pacer sees each batch complete.
type Pacer func(ctx context.Context) error

// TickerPacer paces batches every interval on a real ticker; stop releases
// the ticker.
func TickerPacer(interval time.Duration) (pace Pacer, stop func()) {
	t := time.NewTicker(interval)
	return func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		}
	}, t.Stop
}

// DrainResult is what a drain did.
type DrainResult struct {
	Closed  int  // sessions closed with CloseServiceRestart
	Batches int  // batches they were closed in
	Largest int  // sessions in the largest batch
	Cut     bool // ctx ended (or the Pacer failed) before every session was closed
}

// Draining reports whether a drain has begun: from then on Admit refuses
// every new session with CloseServiceRestart, and readiness should fail.
func (h *Hub) Draining() bool { return h.draining.Load() }

// drainRefusal is Admit's first check: during a drain nothing is admitted
// (not even the key is looked up), and the client is told to go elsewhere.
func (h *Hub) drainRefusal(s *session.Session) error {
	if !h.draining.Load() {
		return nil
	}
	h.reject(metrics.RejectDraining)
	h.sampled.Log(slog.LevelInfo, "connection refused: draining", "conn", s.ID, "transport", s.Transport, "addr", s.Addr)
	return &ErrRejected{session.CloseServiceRestart, "service restart"}
}

// Drain begins refusing new sessions, then closes every live one with
// CloseServiceRestart in DrainSteps(period) batches of at most
// ceil(live/steps) each: the first at once, each next one when pace
// returns (nil pace: a ticker every period/steps). The order is random, so
// no shard or key goes first. With few sessions the batches are of one and
// the drain ends early; sessions admitted while it began (their admission
// was already past the check) are found and closed after the others.
//
// Drain returns once every session has been closed (the transports then
// Leave, counting each in wspubsub_disconnects_total{reason="drain"}), or
// when ctx ends first: the caller's Shutdown then closes the rest at once.
// Calling it again resumes closing what is left.
func (h *Hub) Drain(ctx context.Context, period time.Duration, pace Pacer) DrainResult {
	h.draining.Store(true)
	steps := DrainSteps(period)
	if pace == nil {
		var stop func()
		pace, stop = TickerPacer(max(period/time.Duration(steps), time.Millisecond))
		defer stop()
	}
	var r DrainResult
	queue := h.openSessions()
	size := max(1, (len(queue)+steps-1)/steps)
	batch := make([]*session.Session, 0, size)
	for {
		batch, queue = nextBatch(batch[:0], queue, size)
		if len(batch) == 0 {
			if queue = h.openSessions(); len(queue) == 0 {
				return r
			}
			continue
		}
		if r.Batches > 0 {
			if err := pace(ctx); err != nil {
				r.Cut = true
				return r
			}
		}
		n := 0
		for i, s := range batch {
			if !s.IsClosed() { // it may have left meanwhile
				s.Close(session.CloseServiceRestart, "service restart")
				n++
			}
			batch[i] = nil
		}
		r.Closed += n
		r.Batches++
		r.Largest = max(r.Largest, n)
	}
}

// nextBatch moves up to size sessions still open from the front of queue
// into dst.
func nextBatch(dst, queue []*session.Session, size int) (batch, rest []*session.Session) {
	for len(dst) < size && len(queue) > 0 {
		s := queue[0]
		queue[0] = nil
		queue = queue[1:]
		if !s.IsClosed() {
			dst = append(dst, s)
		}
	}
	return dst, queue
}

// openSessions returns every registered session not yet closed, in random
// order.
func (h *Hub) openSessions() []*session.Session {
	var out []*session.Session
	h.each(func(s *session.Session) {
		if !s.IsClosed() {
			out = append(out, s)
		}
	})
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}
