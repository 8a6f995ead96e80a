package session

import (
	"sync"

	"github.com/wspubsub/wspubsub/internal/envelope"
)

// resume is the state of a session whose client asked for ids and resume
// (a since parameter, or Last-Event-ID): the id of the last message it was
// given, so that nothing reaches it twice or out of order, and the live
// messages held back while its history is being read.
type resume struct {
	mu        sync.Mutex
	last      envelope.ID
	holding   bool
	held      []*Message
	heldBytes int
	// pending: a resync was asked for while the session was held (see
	// HoldForResync).
	pending bool
}

// GapFrame is the first frame a resuming client gets when its history no
// longer reaches back to the id it named.
var GapFrame = []byte(`{"gap":true}`)

// Resumes reports whether the client asked for ids and resume.
func (s *Session) Resumes() bool { return s.res != nil }

// LastID is the id of the last message given to a resuming client ("0"
// when none).
func (s *Session) LastID() string {
	s.res.mu.Lock()
	defer s.res.mu.Unlock()
	return s.res.last.String()
}

// Hold makes Deliver hold recorded messages back (in order, bounded by the
// queue's limit) until Replay: call it before reading the history, so that
// a message published meanwhile is neither lost nor given twice. It
// reports false when the session is held already (being caught up).
func (s *Session) Hold() bool {
	s.res.mu.Lock()
	defer s.res.mu.Unlock()
	if s.res.holding {
		return false
	}
	s.res.holding = true
	return true
}

// HoldForResync is Hold for a catch-up after the broker's subscription
// came back. When the session is held already (being admitted, or caught
// up by an earlier resync), that catch-up's history read may predate what
// was missed: it is marked instead, and its Replay reports that the
// history must be read once more.
func (s *Session) HoldForResync() bool {
	s.res.mu.Lock()
	defer s.res.mu.Unlock()
	if s.res.holding {
		s.res.pending = true
		return false
	}
	s.res.holding = true
	return true
}

// Replay queues what the history held for this client, then the messages
// held back since Hold, each only if it comes after the last one given.
// gap queues the gap frame first and forgets the last id; a non-empty
// position (a client that asked to start from now) queues {"id":position}
// and starts from there. It reports again when a resync was asked for
// meanwhile (HoldForResync): the session then stays held, with what it
// held, and the caller must read the history from LastID and Replay again.
func (s *Session) Replay(gap bool, position string, history []*Message) (again bool) {
	r := s.res
	r.mu.Lock()
	defer r.mu.Unlock()
	held := r.held
	if r.pending {
		// What is held may be newer than what the resync will find
		// missing: it waits for that replay.
		r.pending, again, held = false, true, nil
	} else {
		r.held, r.heldBytes, r.holding = nil, 0, false
	}
	if gap {
		r.last = envelope.ID{}
		s.push(NewMessage(GapFrame))
	}
	if position != "" {
		if id, ok := envelope.ParseID(position); ok {
			r.last = id
			// It carries its id (for EventSource's id: line, so that a
			// browser's own reconnect sends it) but skips the filter.
			m := NewMessage([]byte(`{"id":"` + id.String() + `"}`))
			m.ID, m.id = id.String(), id
			s.push(m)
		}
	}
	for _, list := range [2][]*Message{history, held} {
		for _, m := range list {
			if m.id.After(r.last) {
				r.last = m.id
				s.push(m)
			}
		}
	}
	return again
}

// Abandon ends a catch-up whose history could not be read: what was held
// is dropped and the session stays held, so that nothing newer than what
// it missed reaches the client (its id would move past the missed
// messages, losing them). The caller closes the session; the client
// resumes from its last id.
func (s *Session) Abandon() {
	s.res.mu.Lock()
	defer s.res.mu.Unlock()
	s.res.held, s.res.heldBytes, s.res.pending = nil, 0, false
}

// deliverRecorded is Deliver for a message with an id to a resuming client.
func (s *Session) deliverRecorded(m *Message) bool {
	r := s.res
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.holding {
		if s.q.limit > 0 && r.heldBytes+m.size > s.q.limit {
			s.Close(CloseTooSlow, "too slow")
			return false
		}
		r.held = append(r.held, m)
		r.heldBytes += m.size
		return true
	}
	if !m.id.After(r.last) {
		return false // given already (by the replay that overlapped it)
	}
	r.last = m.id
	return s.push(m)
}

// NewRecorded returns the message a resuming client gets for a recorded
// payload: {"id":"<id>", followed by the payload's members. It reports
// false when id is not a history id.
func NewRecorded(id string, payload []byte) (*Message, bool) {
	parsed, ok := envelope.ParseID(id)
	if !ok || len(payload) < 2 || payload[0] != '{' {
		return nil, false
	}
	b := make([]byte, 0, len(id)+len(payload)+8)
	b = append(append(append(b, `{"id":"`...), id...), '"')
	if rest := payload[1:]; rest[0] != '}' {
		b = append(b, ',')
	}
	b = append(b, payload[1:]...)
	m := NewMessage(b)
	m.ID, m.id = id, parsed
	return m, true
}
