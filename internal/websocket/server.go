// Package websocket is the WebSocket transport: it upgrades HTTP requests,
// admits the session through the hub, reads client frames (heartbeat,
// pings, close) and writes each session's queue to its socket.
//
// It owns the socket and nothing else: routing, key checks and limits
// belong to the hub, and which requests may connect to the gateway. It also
// owns the listener's first look at each connection (sniff.go), because
// upgrades are read there without net/http.
//
// An idle connection holds no goroutine and no buffer. Its socket waits in
// one epoll set watched by one goroutine for the whole server (netpoll.go);
// when a client sends something, a goroutine reads it and exits. Writes are
// coalesced — everything queued for a connection goes out in one writev —
// by a small pool of writers. Only a connection whose socket is wrapped
// (bytes buffered behind its handshake, TLS, or no descriptor) keeps a
// reader goroutine of its own; a TLS connection's writes also run on a
// goroutine of their own (the slow lane), since crypto/tls cannot resume a
// write cut short by a deadline.
package websocket

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
	// CoalesceGap: a connection written less than this long ago waits
	// until it has passed, gathering frames into one write [0: never waits].
	CoalesceGap time.Duration
	Writers     int // writer goroutines [GOMAXPROCS/2, at least 1]
	// CloseWait bounds how long a server-initiated close waits for the
	// client's close reply (RFC 6455: the server then closes the TCP
	// connection, which the client waits for) [2s].
	CloseWait time.Duration
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
	poll      *poller // started with the first connection it can watch; nil without epoll
	pollOnce  sync.Once
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
	if cfg.CloseWait <= 0 {
		cfg.CloseWait = defaultCloseWait
	}
	return &Server{
		cfg:       cfg,
		ctx:       ctx,
		pool:      newWriterPool(cfg.Writers, cfg.CoalesceGap, cfg.Metrics.WritePauses.Inc),
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

// handshakeTimeout bounds reading and answering an upgrade request.
const handshakeTimeout = 10 * time.Second

// Serve upgrades the request, admits the session through the hub and
// serves the connection on its own goroutine; the HTTP handler then returns
// so its buffers are freed. The gateway has already checked the request and
// established who the peer is.
func (s *Server) Serve(w http.ResponseWriter, r *http.Request, peer session.Peer) {
	nc, rw, _, err := s.upgrader.Upgrade(r, w)
	if err != nil {
		s.cfg.Metrics.Rejections.WithLabelValues(metrics.RejectBadRequest).Inc()
		s.cfg.Logger.Info("websocket handshake failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	if rw != nil && rw.Reader.Buffered() > 0 {
		nc = &bufferedConn{Conn: nc, r: rw.Reader}
	}
	s.start(nc, peer)
}

// start admits the session for peer on the upgraded connection, then
// hands it to the poller, or to a goroutine of its own when its socket is
// wrapped.
func (s *Server) start(nc net.Conn, peer session.Peer) {
	s.open.Add(1)
	c := &conn{srv: s, nc: nc, rd: nc}
	// A reader parked in Read for the connection's whole life has every
	// wrapper between it and the socket as a frame on its stack (one too
	// many doubles the stack, 2 → 4 KB); and the poller watches only
	// sockets read directly.
	// A TLS connection is read and written through crypto/tls: its
	// NetConn is the ciphertext, and it has no descriptor to poll.
	if c.tls = isTLS(nc); !c.tls {
		if u, ok := nc.(interface{ NetConn() net.Conn }); ok {
			c.rd = u.NetConn()
		}
	}
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	polled := s.pollable(c)
	peer.Client = "" // WebSocket text arrives on the socket, never by POST
	c.sess = session.New(s.cfg.Hub.NewID(), peer, Name, c, s.cfg.QueueBytes)
	// Admission runs on the calling goroutine, so a reader goroutine
	// starts with a small, fresh stack.
	if !c.admit() {
		return
	}
	if polled && s.poll.add(c) {
		return
	}
	go c.serve()
}

// Handshake is what the raw path knows of an upgrade request when it
// decides on it.
type Handshake struct {
	URI, Host, Origin string
	Remote            string // the socket's peer address
	ForwardedFor      string // X-Forwarded-For, as sent
	RealIP            string // X-Real-IP, as sent
	Forwarded         bool   // a Forwarded header was present
}

// Gate decides on a raw upgrade request: it returns who the peer is, or an
// HTTP status to refuse the upgrade with.
type Gate func(h *Handshake) (peer session.Peer, status int)

// serveRaw upgrades a connection that has not gone through net/http: br
// holds the request, already peeked (and is returned to pool when the
// handshake leaves nothing buffered). gobwas reads the request with pooled
// buffers, so an upgrade leaves no garbage behind — net/http's hijack costs
// two 4 KB buffers and a request per connection.
func (s *Server) serveRaw(nc net.Conn, br *bufio.Reader, pool *sync.Pool, gate Gate) {
	hs := Handshake{Remote: nc.RemoteAddr().String()}
	var peer session.Peer
	u := ws.Upgrader{
		OnRequest: func(b []byte) error { hs.URI = string(b); return nil },
		OnHost:    func(b []byte) error { hs.Host = string(b); return nil },
		OnHeader: func(k, v []byte) error {
			switch {
			case strings.EqualFold(string(k), "Origin"):
				hs.Origin = string(v)
			case strings.EqualFold(string(k), "X-Forwarded-For"):
				hs.ForwardedFor = joinHeader(hs.ForwardedFor, string(v))
			case strings.EqualFold(string(k), "X-Real-IP"):
				hs.RealIP = string(v)
			case strings.EqualFold(string(k), "Forwarded"):
				hs.Forwarded = true
			}
			return nil
		},
		OnBeforeUpgrade: func() (ws.HandshakeHeader, error) {
			var status int
			peer, status = gate(&hs)
			if status != 0 {
				return nil, ws.RejectConnectionError(ws.RejectionStatus(status))
			}
			return nil, nil
		},
	}
	_ = nc.SetDeadline(time.Now().Add(handshakeTimeout))
	_, err := u.Upgrade(readWriter{br, nc})
	_ = nc.SetDeadline(time.Time{})
	if err != nil {
		var rej interface{ StatusCode() int }
		if !errors.As(err, &rej) {
			s.cfg.Metrics.Rejections.WithLabelValues(metrics.RejectBadRequest).Inc()
			s.cfg.Logger.Info("websocket handshake failed", "remote", hs.Remote, "err", err)
		}
		_ = nc.Close()
		return
	}
	if br.Buffered() > 0 {
		nc = &bufferedConn{Conn: nc, r: br}
	} else {
		br.Reset(nil)
		pool.Put(br)
	}
	s.start(nc, peer)
}

// joinHeader joins repeated header lines as net/http would read them.
func joinHeader(a, b string) string {
	if a == "" {
		return b
	}
	return a + ", " + b
}

type readWriter struct {
	io.Reader
	io.Writer
}

// isTLS reports whether nc (or the connection under its handshake's
// buffer) is a TLS connection.
func isTLS(nc net.Conn) bool {
	if b, ok := nc.(*bufferedConn); ok {
		nc = b.Conn
	}
	_, ok := nc.(*tls.Conn)
	return ok
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
