package session

import "sync"

type pushResult uint8

const (
	pushOK pushResult = iota
	pushWake
	pushOverflow
	pushClosed
)

// Queue is a session's bounded outbound queue, bounded in payload bytes. It
// also tracks whether a writer is scheduled, so that a burst of deliveries
// wakes the transport once and the writer sends the whole burst in one go;
// a drain takes everything and re-arms, so the next push wakes it again.
type Queue struct {
	mu     sync.Mutex
	items  []*Message
	bytes  int
	limit  int
	armed  bool // a writer has been woken and has not drained the queue since
	closed bool
}

func (q *Queue) push(m *Message) pushResult {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return pushClosed
	}
	if q.limit > 0 && q.bytes+m.size > q.limit {
		q.mu.Unlock()
		return pushOverflow
	}
	q.bytes += m.size
	q.items = append(q.items, m)
	wake := !q.armed
	q.armed = true
	q.mu.Unlock()
	if wake {
		return pushWake
	}
	return pushOK
}

func (q *Queue) drain(dst []*Message) []*Message {
	q.mu.Lock()
	defer q.mu.Unlock()
	dst = dst[:0]
	q.armed = false
	if len(q.items) == 0 {
		if cap(q.items) > 64 { // release a burst's backing array
			q.items = nil
		}
		return dst
	}
	dst = append(dst, q.items...)
	clear(q.items)
	q.items = q.items[:0]
	q.bytes = 0
	return dst
}

// pop removes and returns the oldest message, or nil; an empty queue is
// re-armed so the next push wakes the transport.
func (q *Queue) pop() *Message {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		q.armed = false
		return nil
	}
	m := q.items[0]
	q.items[0] = nil
	q.items = q.items[1:]
	q.bytes -= m.size
	if len(q.items) == 0 {
		q.items = nil
	}
	return m
}

// close stops further pushes; with drop, queued messages are discarded.
func (q *Queue) close(drop bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	if drop {
		clear(q.items)
		q.items = nil
		q.bytes = 0
	}
}
