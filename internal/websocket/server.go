// Package websocket is the WebSocket transport: it upgrades HTTP requests,
// admits the session through the hub, reads client frames (heartbeat,
// pings, close) and writes each session's queue to its socket.
//
// It owns the socket and nothing else: routing and key checks belong to the
// hub. Writes are coalesced — everything queued for a connection goes out in
// one writev — and no goroutine or buffer is held by an idle connection
// beyond its blocked reader.
package websocket

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// Name is the transport's label in metrics, logs and events.
const Name = "websocket"

// Config configures the WebSocket transport. Zero values take the defaults
// in brackets.
type Config struct {
	Hub     *hub.Hub
	Metrics *metrics.Metrics
	Logger  *slog.Logger

	IdleTimeout   time.Duration // no frame from the client for this long: dead [60s]
	WriteTimeout  time.Duration // a write blocked this long: dead [10s]
	QueueBytes    int           // per-connection outbound queue [1 MiB]
	MaxFrameBytes int           // largest client message [4 KiB]
}

// Server accepts WebSocket connections.
type Server struct {
	cfg       Config
	ctx       context.Context
	pool      *writerPool
	open      atomic.Int64
	heartbeat *session.Message
	ping      *session.Message
	upgrader  ws.HTTPUpgrader
}

// NewServer returns a transport whose connections live until ctx ends or
// the hub closes them.
func NewServer(ctx context.Context, cfg Config) *Server {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = 1 << 20
	}
	if cfg.MaxFrameBytes <= 0 {
		cfg.MaxFrameBytes = 4 << 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Server{
		cfg:       cfg,
		ctx:       ctx,
		pool:      newWriterPool(),
		heartbeat: session.NewControl(session.EncWebSocket, textFrame([]byte(hub.Heartbeat))),
		ping:      session.NewControl(session.EncWebSocket, ws.MustCompileFrame(ws.NewPingFrame(nil))),
		upgrader:  ws.HTTPUpgrader{Timeout: 5 * time.Second},
	}
}

// Open returns the number of upgraded sockets not yet closed (admitted or
// still authenticating).
func (s *Server) Open() int { return int(s.open.Load()) }

// IsUpgrade reports whether r asks for a WebSocket.
func IsUpgrade(r *http.Request) bool {
	return r.Method == http.MethodGet && headerHasToken(r.Header.Get("Connection"), "upgrade") &&
		headerHasToken(r.Header.Get("Upgrade"), "websocket")
}

// Serve upgrades the request, admits the session through the hub and
// serves the connection on its own goroutine; the HTTP handler then returns
// so its buffers are freed.
func (s *Server) Serve(w http.ResponseWriter, r *http.Request, key string) {
	nc, rw, _, err := s.upgrader.Upgrade(r, w)
	if err != nil {
		s.cfg.Metrics.Rejections.WithLabelValues(metrics.RejectBadRequest).Inc()
		s.cfg.Logger.Info("websocket handshake failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	if rw != nil && rw.Reader.Buffered() > 0 {
		nc = &bufferedConn{Conn: nc, r: rw.Reader}
	}
	s.open.Add(1)
	c := &conn{srv: s, nc: nc, closeSent: make(chan struct{})}
	if tc, ok := nc.(*net.TCPConn); ok {
		c.raw, _ = tc.SyscallConn()
	}
	c.sess = session.New(s.cfg.Hub.NewID(), key, Name, c, s.cfg.QueueBytes)
	// Admission runs here, on the HTTP handler's goroutine, so the
	// connection's long-lived reader starts with a small, fresh stack.
	if !c.admit() {
		return
	}
	go c.serve()
}

// bufferedConn keeps bytes the client sent right behind its handshake.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func headerHasToken(v, token string) bool {
	for part := range strings.SplitSeq(v, ",") {
		if strings.EqualFold(strings.TrimSpace(part), token) {
			return true
		}
	}
	return false
}
