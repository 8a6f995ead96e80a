// Package session is the transport-agnostic view of one live client
// connection: its key, its bounded outbound queue, and the hooks a transport
// provides to wake its writer and to close it.
//
// The hub only ever talks to *Session; WebSocket, EventSource and long-polling
// each implement Transport. Session must not do I/O itself and must never
// block: Deliver and Close are called with hub locks held.
package session

import (
	"net/http"

	"sync/atomic"

	"github.com/wspubsub/wspubsub/internal/envelope"
)

// Close codes sent to clients (WebSocket close codes; other transports map
// them to their own signals). Documented in the README.
const (
	CloseNormal         = 1000
	CloseGoingAway      = 1001 // server shutting down
	CloseProtocol       = 1002
	CloseInvalidData    = 1007 // client text that is not UTF-8
	CloseTooBig         = 1009 // client frame over the limit
	CloseInternal       = 1011 // the gateway failed serving this connection
	CloseServiceRestart = 1012 // the gateway is draining (a deploy): reconnect now, with jitter, elsewhere
	CloseTryAgain       = 1013 // key store unavailable
	CloseTooSlow        = 4008 // outbound queue overflowed
	CloseRateLimited    = 4029 // client sent messages too fast
	CloseUnauthorized   = 4401 // unknown key: do not retry
	CloseRevoked        = 4403 // key removed from the store: do not retry
	CloseTooMany        = 4429 // too many connections, or failed key checks, for this key or address
)

// HTTPStatus is the HTTP status that carries a close code on the HTTP
// transports (a refused poll, POST or stream).
func HTTPStatus(code int) int {
	switch code {
	case CloseUnauthorized:
		return http.StatusUnauthorized
	case CloseRevoked:
		return http.StatusForbidden
	case CloseTryAgain, CloseGoingAway, CloseServiceRestart:
		return http.StatusServiceUnavailable
	case CloseTooBig:
		return http.StatusRequestEntityTooLarge
	case CloseRateLimited, CloseTooMany:
		return http.StatusTooManyRequests
	case CloseProtocol, CloseInvalidData:
		return http.StatusBadRequest
	case CloseInternal:
		return http.StatusInternalServerError
	default: // too slow, idle, normal: the connection is gone, start anew
		return http.StatusGone
	}
}

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

// Peer says who is connecting, as the gateway established it.
type Peer struct {
	Key string // the client's key, as it sent it
	// DecodedKey is Key with its %XX escapes decoded, when the client sent
	// a bare key that has some (else ""): the key check tries it when Key
	// itself is refused. Kept only until admission.
	DecodedKey string
	Addr       string // the client's address (an IP), for per-address limits
	// Client identifies the client behind an HTTP-transport connection
	// (its sid, or a digest of what identifies it), so that its POSTs reach
	// that connection; empty for WebSocket.
	Client string
	// Resume: the client asked for ids and resume, from Since (an id, ""
	// for from now). Set only when the gateway keeps history.
	Resume bool
	Since  string
	// Origin is the browser's Origin header ("" for other clients), for
	// an auth hook. The session keeps it only until admission, and after
	// it only when its credential expires (a refresh asks the hook again):
	// it is not among the fields every idle session carries (who).
	Origin string
}

// who is the part of a Peer that every session keeps, for its whole life.
// An idle session is one allocation of a size class (192 bytes): a field
// more here moves every connection to the next (224).
type who struct {
	Key    string
	Addr   string
	Client string
	Since  string
}

// Session is one authenticated (or authenticating) client connection.
type Session struct {
	ID        uint64
	Transport string // "websocket", ...
	who              // the Peer's fields (Key, Addr, Client, Since; Resume below)
	// DispatchSeq is the hub's: the number of the last message it routed
	// here, so a message listing a recipient twice is delivered once. Only
	// the hub's Dispatch goroutine touches it.
	DispatchSeq uint64
	t           Transport
	q           Queue
	// life is 0 while open; the close sets it once, whole: bit 0 closed,
	// bit 1 by the client, the code above (one word rather than a sync.Once
	// and three flags keeps an idle session in a smaller allocation).
	life   atomic.Uint32
	Resume bool      // the Peer's: beside life, in what would be padding
	res    *resume   // nil unless Resume
	id     *identity // nil unless admitted with a token or an expiry, or not yet admitted with an Origin or a decoded key (identity.go)
}

// New returns a session whose queue holds at most limit bytes.
func New(id uint64, p Peer, transport string, t Transport, limit int) *Session {
	s := &Session{ID: id, who: who{Key: p.Key, Addr: p.Addr, Client: p.Client, Since: p.Since}, Resume: p.Resume, Transport: transport, t: t}
	if p.Origin != "" || p.DecodedKey != "" {
		s.id = &identity{origin: p.Origin, decoded: p.DecodedKey} // until admission (SetIdentity)
	}
	s.q.limit = limit
	if p.Resume {
		s.res = &resume{}
		s.res.last, _ = envelope.ParseID(p.Since)
	}
	return s
}

// Deliver queues m. It reports false when the session is closed or its
// queue overflowed, in which case the session is closed with CloseTooSlow.
func (s *Session) Deliver(m *Message) bool {
	if s.res != nil && m.ID != "" {
		return s.deliverRecorded(m)
	}
	return s.push(m)
}

func (s *Session) push(m *Message) bool {
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
	if s.life.CompareAndSwap(0, lifeClosed|uint32(code)<<lifeCodeShift) {
		s.close(code, reason)
	}
}

// CloseByPeer records that the client ended the connection (a WebSocket
// close frame), unless the server closed it first: the code is then not a
// verdict of the server's.
func (s *Session) CloseByPeer(code int) {
	if s.life.CompareAndSwap(0, lifeClosed|lifeByPeer|uint32(code)<<lifeCodeShift) {
		s.close(code, "")
	}
}

const (
	lifeClosed    = 1 << 0
	lifeByPeer    = 1 << 1
	lifeCodeShift = 2
)

func (s *Session) close(code int, reason string) {
	s.q.close(code == CloseTooSlow)
	s.t.Closed(code, reason)
}

// ClosedByPeer reports whether the close came from the client.
func (s *Session) ClosedByPeer() bool { return s.life.Load()&lifeByPeer != 0 }

// CloseCode returns the code the session was closed with, or 0.
func (s *Session) CloseCode() int { return int(s.life.Load() >> lifeCodeShift) }

// IsClosed reports whether Close was called.
func (s *Session) IsClosed() bool { return s.life.Load() != 0 }

// KeepAlive forwards the hub's periodic keep-alive tick to the transport.
func (s *Session) KeepAlive() {
	if s.life.Load() == 0 {
		s.t.KeepAlive()
	}
}

// Drain moves every queued message into dst (reusing its storage) and
// returns it, and arms the next Deliver to call Wake again: a transport
// that drains once per wake-up sees every message.
func (s *Session) Drain(dst []*Message) []*Message { return s.q.drain(dst) }

// Pop removes and returns the oldest queued message, or nil (for
// transports that deliver one message per response, like long-polling).
func (s *Session) Pop() *Message { return s.q.pop() }
