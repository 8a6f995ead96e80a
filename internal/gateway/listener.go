package gateway

import (
	"errors"
	"net"
	"sync/atomic"
	"syscall"
)

// limitListener bounds the sockets open at once, whatever they carry — a
// WebSocket, a held poll, an idle keep-alive, a health check, a handshake
// that never completes: past max, a new connection is closed as soon as it
// is accepted, and refused is called. Admitted clients are limited
// separately (--max-connections); this bound keeps the process within its
// file descriptors whatever clients do.
type limitListener struct {
	net.Listener
	max     int64
	open    atomic.Int64
	refused func()
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			_ = c.Close()
			l.refused()
			continue
		}
		return &countedConn{Conn: c, l: l}, nil
	}
}

// Open returns the number of accepted sockets not yet closed.
func (l *limitListener) Open() int { return int(l.open.Load()) }

// countedConn gives its slot back when closed (once, however often Close is
// called).
type countedConn struct {
	net.Conn
	l      *limitListener
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.l.open.Add(-1)
	}
	return c.Conn.Close()
}

// NetConn returns the socket itself, for readers that need no counting
// (the WebSocket reader keeps its stack small that way).
func (c *countedConn) NetConn() net.Conn { return c.Conn }

// SyscallConn exposes the descriptor, so the WebSocket writers can write
// to it without blocking.
func (c *countedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("connection has no descriptor")
}
