package hub

import (
	"context"
	"encoding/json"
	"log/slog"
	"unicode/utf8"

	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// replay catches a resuming session up from its key's history: live
// messages are held back while the history is read, then both are queued
// in order, each once. position: a client that asked to start from now
// (since empty) is told its position. held: the caller has called s.Hold
// already. It reports false when the session was already being caught up
// (nothing to do).
func (h *Hub) replay(ctx context.Context, s *session.Session, since string, position, held bool) (bool, error) {
	if !held && !s.Hold() {
		return false, nil
	}
	cctx, cancel := context.WithTimeout(ctx, h.cfg.KeyCheckTimeout)
	defer cancel()
	rp, err := h.cfg.History.Since(cctx, s.Key, since)
	if err != nil {
		s.Replay(false, "", nil) // let go of what was held; the caller closes s
		h.m.Resumes.WithLabelValues(metrics.ResumeFailed).Inc()
		h.sampled.Log(slog.LevelWarn, "resume failed: history unavailable", "key", keystore.Redact(s.Key), "conn", s.ID, "err", err)
		return true, err
	}
	msgs := make([]*session.Message, 0, len(rp.Entries))
	for _, e := range rp.Entries {
		// Backends can record with FCALL directly: what the live path would
		// drop must not reach a client from the history either.
		m, ok := session.NewRecorded(e.ID, e.Payload)
		if !ok || !utf8.Valid(e.Payload) || !json.Valid(e.Payload) {
			h.m.Drops.WithLabelValues(envelope.ReasonInvalidJSON).Inc()
			continue
		}
		msgs = append(msgs, m)
	}
	pos := ""
	if position && since == "" {
		pos = rp.Top
	}
	s.Replay(rp.Gap, pos, msgs)
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
	return true, nil
}

// Resync catches every resuming session up after the broker's subscription
// came back: what was published while it was down reached no one live, but
// the history has it. A session whose history cannot be read is closed with
// CloseTryAgain, so its client resumes from another attempt.
func (h *Hub) Resync(ctx context.Context) {
	if h.cfg.History == nil {
		return
	}
	h.resyncMu.Lock()
	defer h.resyncMu.Unlock()
	var list []*session.Session
	h.each(func(s *session.Session) {
		if s.Resumes() && !s.IsClosed() {
			list = append(list, s)
		}
	})
	for _, s := range list {
		if _, err := h.replay(ctx, s, s.LastID(), false, false); err != nil {
			s.Close(session.CloseTryAgain, "history unavailable")
		}
	}
	if len(list) > 0 {
		h.log.Info("resuming clients caught up after the broker came back", "sessions", len(list))
	}
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
		r.msg, r.bad = session.NewRecorded(string(r.id), payload)
		r.bad = !r.bad
	}
	return r.msg
}
