// Package eventsource is the EventSource (Server-Sent Events) transport: a
// GET with Accept: text/event-stream becomes one long response in which each
// message is a block of "data:" lines. Clients send text by POST to the same
// URL (handled by the gateway, not here).
//
// It owns the stream and nothing else: admission and routing belong to the
// hub. A server-side close (unauthorized, revoked, too slow, going away) is
// sent in-stream as `event: close` with {"code":…,"reason":…} — the same
// codes as WebSocket closes — since a page cannot read an EventSource's
// HTTP status.
package eventsource

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// Name is the transport's label in metrics, logs and events.
const Name = "eventsource"

// Config configures the transport; zero values take the defaults in brackets.
type Config struct {
	Hub          *hub.Hub
	Metrics      *metrics.Metrics
	Logger       *slog.Logger
	WriteTimeout time.Duration // a write blocked this long: dead [10s]
	QueueBytes   int           // per-connection outbound queue [1 MiB]
	// RetryAfterClose is the reconnect delay suggested to browsers when the
	// server ends a stream, so a page that ignores close events (an old
	// bullet page) does not hammer the gateway [10s].
	RetryAfterClose time.Duration
}

// Server serves EventSource streams.
type Server struct {
	cfg  Config
	open atomic.Int64
}

// NewServer returns the transport.
func NewServer(cfg Config) *Server {
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = 1 << 20
	}
	if cfg.RetryAfterClose <= 0 {
		cfg.RetryAfterClose = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{cfg: cfg}
}

// Open returns the number of streams being served.
func (s *Server) Open() int { return int(s.open.Load()) }

// Wants reports whether r asks for an event stream.
func Wants(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.Header.Get("Accept"), "text/event-stream")
}

// stream is one EventSource connection; it implements session.Transport.
type stream struct {
	wake      chan struct{}
	keepalive atomic.Bool
	closeMsg  atomic.Pointer[closing]
}

// closing is a server-side close: its code and the event that says it.
type closing struct {
	code  int
	event []byte
}

func (t *stream) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// Wake implements session.Transport.
func (t *stream) Wake() { t.signal() }

// KeepAlive implements session.Transport: a comment line keeps proxies from
// cutting an idle stream and detects dead peers by the write failing.
func (t *stream) KeepAlive() { t.keepalive.Store(true); t.signal() }

// Closed implements session.Transport.
func (t *stream) Closed(code int, reason string) {
	t.closeMsg.Store(&closing{code, closeEvent(code, reason)})
	t.signal()
}

// Reconnect delay suggested to the browsers of a drain's streams (1012):
// soon, and jittered so that they do not all come back at once.
const (
	drainRetryMin    = 250 * time.Millisecond
	drainRetrySpread = 2 * time.Second
)

// retryLine suggests the browser's reconnect delay after a close with code:
// clients of a draining gateway (1012) are welcome back at once on
// another node (the load balancer no longer sends them here), with Last-Event-ID;
// any other close waits RetryAfterClose.
func (s *Server) retryLine(code int) string {
	d := s.cfg.RetryAfterClose
	if code == session.CloseServiceRestart {
		d = drainRetryMin + rand.N(drainRetrySpread)
	}
	return fmt.Sprintf("retry: %d\n", d.Milliseconds())
}

func closeEvent(code int, reason string) []byte {
	return fmt.Appendf(nil, "event: close\ndata: {\"code\":%d,\"reason\":%q}\n\n", code, reason)
}

// Encode renders payload as one event: a "data:" line per line of payload.
// Lines end at CR, LF or CRLF, as EventSource parsers see them: a bare CR
// (legal JSON whitespace) left inside a data line would cut the message.
func Encode(payload []byte) []byte {
	out := make([]byte, 0, len(payload)+16)
	for {
		i := bytes.IndexAny(payload, "\r\n")
		if i < 0 {
			break
		}
		out = append(append(append(out, "data: "...), payload[:i]...), '\n')
		if payload[i] == '\r' && i+1 < len(payload) && payload[i+1] == '\n' {
			i++
		}
		payload = payload[i+1:]
	}
	out = append(append(append(out, "data: "...), payload...), '\n')
	return append(out, '\n')
}

// encoded is m as one event; a message with a history id carries it in an
// id: line, which the browser sends back as Last-Event-ID when it
// reconnects by itself.
func encoded(m *session.Message) []byte {
	if m.ID == "" {
		return m.Encoded(session.EncEventStream, Encode)
	}
	return m.Encoded(session.EncEventStream, func(p []byte) []byte {
		return append([]byte("id: "+m.ID+"\n"), Encode(p)...)
	})
}

// Serve admits a session for peer and streams its messages until the
// client goes away or the session is closed.
func (s *Server) Serve(w http.ResponseWriter, r *http.Request, peer session.Peer) {
	s.open.Add(1)
	defer s.open.Add(-1)
	h := s.cfg.Hub
	t := &stream{wake: make(chan struct{}, 1)}
	sess := session.New(h.NewID(), peer, Name, t, s.cfg.QueueBytes)
	defer h.Recover(sess, func() { _, _ = w.Write(closeEvent(session.CloseInternal, "internal error")) })
	rc := http.NewResponseController(w)
	// The server's read timeout bounds request bodies; a stream has none
	// and lives until it ends. A request that declares a body keeps it:
	// net/http reads that body before the stream starts, and one never
	// sent must not hold the socket.
	if r.Body == nil || r.Body == http.NoBody {
		_ = rc.SetReadDeadline(time.Time{})
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream; charset=utf-8")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)

	if err := h.Admit(r.Context(), sess); err != nil {
		_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		code, reason := hub.Verdict(err)
		// Closed, as the WebSocket transport does: a refusal that came
		// after the hub queued its token's expiry leaves an entry that
		// only a closed session lets the hub drop.
		sess.Close(code, reason)
		_, _ = io.WriteString(w, s.retryLine(code))
		_, _ = w.Write(closeEvent(code, reason))
		_ = rc.Flush()
		return
	}
	// Headers and a first comment go out at once: browsers fire onopen only
	// when the response starts.
	_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	_, _ = w.Write([]byte(": connected\n\n"))
	reason := metrics.DiscClient
	if err := rc.Flush(); err != nil {
		reason = metrics.DiscWriteError
	} else {
		reason = s.pump(w, rc, r, sess, t)
	}
	h.Leave(sess, reason)
	if !sess.IsClosed() {
		sess.Close(session.CloseNormal, "")
	}
}

// pump writes queued messages, keep-alives and the final close event.
func (s *Server) pump(w http.ResponseWriter, rc *http.ResponseController, r *http.Request, sess *session.Session, t *stream) string {
	var msgs []*session.Message
	for {
		// The deadline bounds writes, not the wait between them: HTTP/2
		// (over TLS) enforces it with a timer that resets a quiet stream.
		_ = rc.SetWriteDeadline(time.Time{})
		select {
		case <-r.Context().Done():
			return metrics.DiscClient
		case <-t.wake:
		}
		_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		// Drain until empty: only an empty Drain re-arms the next Wake.
		for msgs = sess.Drain(msgs); len(msgs) > 0; msgs = sess.Drain(msgs) {
			for i, m := range msgs {
				if _, err := w.Write(encoded(m)); err != nil {
					return metrics.DiscWriteError
				}
				msgs[i] = nil
			}
		}
		if t.keepalive.Swap(false) {
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil {
				return metrics.DiscWriteError
			}
		}
		if cm := t.closeMsg.Load(); cm != nil {
			_, _ = io.WriteString(w, s.retryLine(cm.code))
			_, _ = w.Write(cm.event)
			_ = rc.Flush()
			return metrics.DiscClient // Leave takes the server's verdict from the session
		}
		if err := rc.Flush(); err != nil {
			return metrics.DiscWriteError
		}
	}
}
