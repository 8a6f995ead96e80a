package hub

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/session"
)

// Dispatch parses one inbound message and queues it to every live session
// of its recipients (or every session, for a broadcast), once per session
// however often a recipient is listed. Malformed messages are dropped with
// one log line and a counter. The payload is encoded once, and routing
// allocates nothing per recipient.
//
// Dispatch is the broker's Handler: it is called from one goroutine.
func (h *Hub) Dispatch(raw []byte) {
	h.m.MessagesIn.Inc()
	defer func() {
		// A bug reached by one message must not take every client down.
		if r := recover(); r != nil {
			h.m.Drops.WithLabelValues(envelope.ReasonInternal).Inc()
			h.log.Error("inbound message dropped: internal error", "panic", fmt.Sprint(r), "bytes", len(raw), "stack", string(debug.Stack()))
		}
	}()
	env, err := h.parser.Parse(raw)
	if err != nil {
		var e *envelope.Error
		reason := "invalid"
		if errors.As(err, &e) {
			reason = e.Reason
		}
		h.m.Drops.WithLabelValues(reason).Inc()
		h.sampled.Log(slog.LevelWarn, "inbound message dropped", "reason", reason, "err", err, "bytes", len(raw))
		return
	}
	msg := session.NewFramed(env.Framed, envelope.FrameRoom)
	n := 0
	if env.Broadcast {
		h.each(func(s *session.Session) {
			if s.Deliver(msg) {
				n++
			}
		})
	} else {
		// A repeated recipient (also one spelt with \u escapes, which the
		// parser decoded) finds its sessions already stamped with this
		// message's number and is skipped: no sorting, no allocation. A
		// single recipient needs no stamp (0: none).
		var seq uint64
		if len(env.Recipients) > 1 {
			h.seq++
			seq = h.seq
		}
		for i, r := range env.Recipients {
			rec := recorded{}
			if env.IDs != nil {
				rec.id = env.IDs[i]
			}
			n += h.deliverTo(r, msg, &rec, seq)
		}
	}
	h.m.Deliveries.Add(float64(n))
}

// deliverTo queues msg to key's sessions; a resuming session gets the
// recorded form (with its id) instead, when the message has one.
func (h *Hub) deliverTo(key []byte, msg *session.Message, rec *recorded, seq uint64) int {
	sh := h.shardOf(key)
	sh.mu.RLock()
	list := sh.keys[string(key)]
	n := 0
	for _, s := range list {
		if seq != 0 {
			if s.DispatchSeq == seq {
				continue
			}
			s.DispatchSeq = seq
		}
		m := msg
		if rec.id != nil && s.Resumes() {
			if r := rec.get(msg.Payload); r != nil {
				m = r
			}
		}
		if s.Deliver(m) {
			n++
		}
	}
	sh.mu.RUnlock()
	return n
}
