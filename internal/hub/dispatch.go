package hub

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/session"
)

// Dispatch parses one inbound message that anyone may have published (a
// plain PUBLISH on the inbound channel) and queues it to every live session
// of its recipients (or every session, for a broadcast), once per session
// however often a recipient is listed. It carries no id: a "wspubsub_ids"
// member is removed, counted and logged (sampled), never trusted — a forged
// id would become a resuming client's position (and a first member "id"
// reaches resuming sessions spaced: unlikeRecorded). Malformed messages are
// dropped with one log line and a counter. The payload is encoded once, and
// routing allocates nothing per recipient.
//
// Dispatch is the broker's plain Handler: it is called from one goroutine.
func (h *Hub) Dispatch(raw []byte) { h.dispatch(raw, false) }

// DispatchRecorded is Dispatch for a message from the channels only the
// gateways and the history functions write: its "wspubsub_ids" member
// gives each recipient's id, and resuming sessions get the recorded form.
// It is the broker's recorded Handler, called from the same goroutine as
// Dispatch.
func (h *Hub) DispatchRecorded(raw []byte) { h.dispatch(raw, true) }

func (h *Hub) dispatch(raw []byte, trusted bool) {
	h.m.MessagesIn.Inc()
	defer func() {
		// A bug reached by one message must not take every client down.
		if r := recover(); r != nil {
			h.m.Drops.WithLabelValues(envelope.ReasonInternal).Inc()
			h.log.Error("inbound message dropped: internal error", "panic", fmt.Sprint(r), "bytes", len(raw), "stack", string(debug.Stack()))
		}
	}()
	var env envelope.Envelope
	var err error
	if trusted {
		env, err = h.parser.ParseRecorded(raw)
	} else {
		env, err = h.parser.Parse(raw)
	}
	if err == nil && env.StrippedIDs {
		h.m.Stripped.WithLabelValues(envelope.ReasonUntrustedIDs).Inc()
		h.sampled.Log(slog.LevelWarn, `a plain message carried "wspubsub_ids": removed, delivered without id (only the history functions write ids)`,
			"reason", envelope.ReasonUntrustedIDs, "bytes", len(raw))
	}
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
	alt := unlikeRecorded(env.Payload)
	n := 0
	if env.Broadcast {
		h.each(func(s *session.Session) {
			m := msg
			if alt != nil && s.Resumes() {
				m = alt
			}
			if s.Deliver(m) {
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
			n += h.deliverTo(r, msg, alt, &rec, seq)
		}
	}
	h.m.Deliveries.Add(float64(n))
}

// unlikeRecorded returns, for a payload whose first member is "id", the
// form resuming sessions get when it goes without id: a resuming client
// reads a frame's id from its first bytes ({"id":"<id>",… — README,
// wspubsub.js), so a plain message's own "id" would pass for a history id
// and move the client's position. A space after the brace keeps the same
// JSON out of that form. nil for any other payload (the common case).
func unlikeRecorded(payload []byte) *session.Message {
	if !bytes.HasPrefix(payload, []byte(`{"id":`)) {
		return nil
	}
	b := make([]byte, envelope.FrameRoom, envelope.FrameRoom+len(payload)+1)
	b = append(append(b, '{', ' '), payload[1:]...)
	return session.NewFramed(b, envelope.FrameRoom)
}

// deliverTo queues msg to key's sessions; a resuming session gets the
// recorded form (with its id) instead, when the message has one, else alt
// when not nil (see unlikeRecorded).
func (h *Hub) deliverTo(key []byte, msg, alt *session.Message, rec *recorded, seq uint64) int {
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
		if s.Resumes() {
			if rec.id == nil {
				if alt != nil {
					m = alt
				}
			} else if r := rec.get(msg.Payload); r != nil {
				m = r
			} else if alt != nil {
				m = alt
			}
		}
		if s.Deliver(m) {
			n++
		}
	}
	sh.mu.RUnlock()
	return n
}
