package session

import (
	"math"
	"strings"
	"sync/atomic"
	"time"
)

// identity is what an admission learned beyond the routing key, kept only
// for sessions that need it (a token, a hook's answer), so a plain-key
// session pays one nil pointer.
type identity struct {
	credential string       // what the client presented, when it differs from Key
	origin     string       // the browser's Origin (an auth hook is told it)
	decoded    string       // the Peer's DecodedKey, until admission
	expires    atomic.Int64 // unix nanoseconds; 0: never
}

// SetIdentity records what admission established: the routing key (Key
// becomes it), the credential the client presented, when that differs from
// the key, and when it expires (zero: never). Called by the hub before the
// session is registered, never after.
func (s *Session) SetIdentity(key, credential string, expires time.Time) {
	if credential == key && expires.IsZero() {
		s.Key = key
		s.id = nil // the Origin held for admission: never asked for again
		return
	}
	var origin string
	if s.id != nil {
		// A copy: not a window into the handshake's buffer.
		origin = strings.Clone(s.id.origin)
	}
	s.id = &identity{origin: origin}
	if credential != key {
		// A copy: the credential may be a window into a request's buffer,
		// which the session must not keep alive.
		s.id.credential = strings.Clone(credential)
	}
	s.Key = key
	s.SetExpires(expires)
}

// DecodedKey is the Peer's DecodedKey (the key decoded, when that differs
// from the key as sent): known until admission.
func (s *Session) DecodedKey() string {
	if s.id == nil {
		return ""
	}
	return s.id.decoded
}

// UseDecodedKey makes the key's decoded spelling the session's key: the
// key check refused the key as sent and accepted it decoded. Before
// admission only.
func (s *Session) UseDecodedKey() {
	if s.id != nil && s.id.decoded != "" {
		s.Key, s.id.decoded = s.id.decoded, ""
	}
}

// Origin is the browser's Origin header the session connected with: known
// until admission, and after it for sessions whose credential expires.
func (s *Session) Origin() string {
	if s.id == nil {
		return ""
	}
	return s.id.origin
}

// Credential is the credential the session was admitted with, when it was
// not its routing key (a token), else "".
func (s *Session) Credential() string {
	if s.id == nil {
		return ""
	}
	return s.id.credential
}

// Expires is when the session's credential expires; zero: never.
func (s *Session) Expires() time.Time {
	if s.id == nil {
		return time.Time{}
	}
	if n := s.id.expires.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// SetExpires moves the expiry (a fresh token); only for sessions admitted
// with an expiry (SetIdentity).
func (s *Session) SetExpires(t time.Time) {
	if s.id == nil {
		return
	}
	var n int64
	switch {
	case t.IsZero():
	case t.After(maxExpiry):
		// Past 2262 Unix nanoseconds overflow: a token with exp
		// 9999999999 ("never") must not wrap into the past.
		n = math.MaxInt64
	case t.Before(minExpiry):
		n = math.MinInt64
	default:
		n = t.UnixNano()
	}
	s.id.expires.Store(n)
}

// The expiries an int64 of Unix nanoseconds holds; later ones are kept as
// the latest (year 2262), earlier ones as the earliest.
var (
	maxExpiry = time.Unix(0, math.MaxInt64)
	minExpiry = time.Unix(0, math.MinInt64)
)
