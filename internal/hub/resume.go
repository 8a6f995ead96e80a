package hub

import (
	"context"
	"log/slog"
	"unicode/utf8"

	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// replay catches a resuming session up from its key's history: live
// messages are held back (the caller has held s) while the history is
// read, then both are queued in order, each once. position: a client that
// asked to start from now (since empty) is told its position. When a
// resync was asked for meanwhile, the history is read again from where s
// now is.
func (h *Hub) replay(ctx context.Context, s *session.Session, since string, position bool) error {
	for {
		again, err := h.replayOnce(ctx, s, since, position)
		if err != nil || !again {
			return err
		}
		since, position = s.LastID(), false
	}
}

// replayOnce is one history read and Replay; again: see Session.Replay.
func (h *Hub) replayOnce(ctx context.Context, s *session.Session, since string, position bool) (again bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, h.cfg.KeyCheckTimeout)
	defer cancel()
	rp, err := h.cfg.History.Since(cctx, s.Key, since)
	if err != nil {
		s.Abandon() // the caller closes s
		h.m.Resumes.WithLabelValues(metrics.ResumeFailed).Inc()
		h.sampled.Log(slog.LevelWarn, "resume failed: history unavailable", "key", keystore.Redact(s.Key), "conn", s.ID, "err", err)
		return false, err
	}
	msgs := make([]*session.Message, 0, len(rp.Entries))
	for _, e := range rp.Entries {
		// Backends can record with FCALL directly: what the live path would
		// drop must not reach a client from the history either.
		m, ok := session.NewRecorded(e.ID, e.Payload)
		if !ok || !utf8.Valid(e.Payload) || !envelope.Valid(e.Payload) {
			h.m.Drops.WithLabelValues(envelope.ReasonInvalidJSON).Inc()
			continue
		}
		msgs = append(msgs, m)
	}
	pos := ""
	if position && since == "" {
		pos = rp.Top
	}
	again = s.Replay(rp.Gap, pos, msgs)
	h.m.Replayed.Add(float64(len(msgs)))
	switch {
	case !position:
		h.m.Resumes.WithLabelValues(metrics.ResumeResync).Inc()
	case rp.Gap:
		h.m.Resumes.WithLabelValues(metrics.ResumeGap).Inc()
	case pos != "":
		h.m.Resumes.WithLabelValues(metrics.ResumeFromNow).Inc()
	default:
		h.m.Resumes.WithLabelValues(metrics.ResumeComplete).Inc()
	}
	return again, nil
}

// Resync catches every resuming session up after the broker's subscription
// came back: what was published while it was down reached no one live, but
// the history has it. The broker calls it from its receiving goroutine
// before it dispatches anything newer: every session is held at once, so
// no live message can overtake what it missed. A session held already
// (being admitted, or caught up by an earlier resync) is marked, and that
// catch-up reads the history once more. The histories are read in the
// background; done is closed when all are caught up. A session whose
// history cannot be read is closed with CloseTryAgain, so its client
// resumes from another attempt.
func (h *Hub) Resync(ctx context.Context) (done <-chan struct{}) {
	ch := make(chan struct{})
	if h.cfg.History == nil {
		close(ch)
		return ch
	}
	var list []*session.Session
	h.each(func(s *session.Session) {
		if s.Resumes() && !s.IsClosed() && s.HoldForResync() {
			list = append(list, s)
		}
	})
	go func() {
		defer close(ch)
		for _, s := range list {
			// The last id is read once held: a message delivered live just
			// before would otherwise be replayed again after a gap.
			if err := h.replay(ctx, s, s.LastID(), false); err != nil {
				s.Close(session.CloseTryAgain, "history unavailable")
			}
		}
		if len(list) > 0 {
			h.log.Info("resuming clients caught up after the broker came back", "sessions", len(list))
		}
	}()
	return ch
}

// recorded is the message each resuming session of one recipient gets,
// built on first need (most recipients have none).
type recorded struct {
	id  []byte
	msg *session.Message
	bad bool
}

func (r *recorded) get(payload []byte) *session.Message {
	if r.msg == nil && !r.bad {
		m, ok := session.NewRecorded(string(r.id), payload)
		r.msg, r.bad = m, !ok
	}
	return r.msg
}
