// Package session is the transport-agnostic view of one live client
// connection: its key, its bounded outbound queue, and the hooks a transport
// provides to wake its writer and to close it.
//
// The hub only ever talks to *Session; WebSocket, EventSource and long-polling
// each implement Transport. Session must not do I/O itself and must never
// block: Deliver and Close are called with hub locks held.
package session

import (
	"sync"
	"sync/atomic"
	"time"
)

// Close codes sent to clients (WebSocket close codes; other transports map
// them to their own signals). Documented in the README.
const (
	CloseNormal       = 1000
	CloseGoingAway    = 1001 // server shutting down
	CloseProtocol     = 1002
	CloseTooBig       = 1009 // client frame over the limit
	CloseTryAgain     = 1013 // key store unavailable
	CloseTooSlow      = 4008 // outbound queue overflowed
	CloseRateLimited  = 4029 // client sent messages too fast
	CloseUnauthorized = 4401 // unknown key: do not retry
	CloseRevoked      = 4403 // key removed from the store: do not retry
)

// Transport is what a session needs from the connection carrying it.
type Transport interface {
	// Wake tells the transport that the queue went from empty to non-empty.
	Wake()
	// KeepAlive is called periodically so the transport can probe or keep
	// idle connections open (WebSocket ping, SSE comment).
	KeepAlive()
	// Closed is called once, after Close, so the transport can flush the
	// close signal and tear down. It must not block.
	Closed(code int, reason string)
}

// Session is one authenticated (or authenticating) client connection.
type Session struct {
	ID        uint64
	Key       string
	Transport string // "websocket", ...
	t         Transport
	q         Queue
	closed    atomic.Bool
	closeOnce sync.Once
	code      atomic.Int32
	tokens    float64   // client message rate limit, guarded by q.mu
	lastTake  time.Time // guarded by q.mu
}

// New returns a session whose queue holds at most limit bytes of payload.
func New(id uint64, key, transport string, t Transport, limit int) *Session {
	s := &Session{ID: id, Key: key, Transport: transport, t: t}
	s.q.limit = limit
	return s
}

// Deliver queues m. It reports false when the session is closed or its
// queue overflowed, in which case the session is closed with CloseTooSlow.
func (s *Session) Deliver(m *Message) bool {
	switch s.q.push(m) {
	case pushWake:
		s.t.Wake()
	case pushOverflow:
		s.Close(CloseTooSlow, "too slow")
		return false
	case pushClosed:
		return false
	}
	return true
}

// Close closes the session once with code and reason; later calls are no-ops.
// Queued messages are discarded when the close is for overflow, otherwise
// the transport may still flush them before the close signal.
func (s *Session) Close(code int, reason string) {
	s.closeOnce.Do(func() {
		s.code.Store(int32(code))
		s.closed.Store(true)
		s.q.close(code == CloseTooSlow)
		s.t.Closed(code, reason)
	})
}

// CloseCode returns the code the session was closed with, or 0.
func (s *Session) CloseCode() int { return int(s.code.Load()) }

// IsClosed reports whether Close was called.
func (s *Session) IsClosed() bool { return s.closed.Load() }

// KeepAlive forwards the hub's periodic keep-alive tick to the transport.
func (s *Session) KeepAlive() {
	if !s.closed.Load() {
		s.t.KeepAlive()
	}
}

// Drain moves every queued message into dst (reusing its storage) and
// returns it. When the queue is empty it returns dst empty and arms the next
// Deliver to call Wake again.
func (s *Session) Drain(dst []*Message) []*Message { return s.q.drain(dst) }

// Pop removes and returns the oldest queued message, or nil (for
// transports that deliver one message per response, like long-polling).
func (s *Session) Pop() *Message { return s.q.pop() }

// Allow reports whether the client may send one more message now, under a
// token bucket of rate messages per second and the given burst.
func (s *Session) Allow(now time.Time, rate float64, burst int) bool {
	s.q.mu.Lock()
	defer s.q.mu.Unlock()
	if s.lastTake.IsZero() {
		s.tokens = float64(burst)
	} else {
		s.tokens = min(float64(burst), s.tokens+now.Sub(s.lastTake).Seconds()*rate)
	}
	s.lastTake = now
	if s.tokens < 1 {
		return false
	}
	s.tokens--
	return true
}
