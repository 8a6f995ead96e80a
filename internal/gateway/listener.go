package gateway

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
)

// limitListener bounds the sockets open at once, whatever they carry — a
// WebSocket, a held poll, an idle keep-alive, a health check, a handshake
// that never completes: past max in all, or past perAddr from one client
// address (peers for which exempt is true, the trusted proxies, are only
// held to max), a new connection is closed as soon as it is accepted, and
// refused is called. Admitted clients are limited separately
// (--max-connections, per key, per address); this bound keeps the process
// within its file descriptors, and one address from taking them all,
// whatever clients do.
type limitListener struct {
	net.Listener
	max     int64
	perAddr int // 0: no per-address bound
	exempt  func(netip.Addr) bool
	refused func(perAddr bool)

	open   atomic.Int64
	mu     sync.Mutex
	byAddr map[string]int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) > l.max {
			l.open.Add(-1)
			l.refused(false)
			_ = c.Close()
			continue
		}
		cc := &countedConn{Conn: c, l: l}
		if !l.admitAddr(cc) {
			l.open.Add(-1)
			l.refused(true)
			_ = c.Close()
			continue
		}
		return cc, nil
	}
}

// admitAddr counts c against its address's share, or reports false when
// that share is used up.
func (l *limitListener) admitAddr(c *countedConn) bool {
	if l.perAddr <= 0 {
		return true
	}
	ap, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil || l.exempt(ap.Addr()) {
		return true
	}
	key := addrKey(ap.Addr())
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byAddr[key] >= l.perAddr {
		return false
	}
	l.byAddr[key]++
	c.addr = key
	return true
}

// Open returns the number of accepted sockets not yet closed.
func (l *limitListener) Open() int { return int(l.open.Load()) }

// countedConn gives its slot back when closed (once, however often Close is
// called).
type countedConn struct {
	net.Conn
	l      *limitListener
	addr   string // counted in l.byAddr, if not empty
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.l.open.Add(-1)
		if c.addr != "" {
			c.l.mu.Lock()
			if c.l.byAddr[c.addr]--; c.l.byAddr[c.addr] <= 0 {
				delete(c.l.byAddr, c.addr)
			}
			c.l.mu.Unlock()
		}
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
