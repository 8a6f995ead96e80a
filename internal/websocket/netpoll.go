//go:build linux

package websocket

// The readiness poller: an idle connection holds no goroutine.
//
// A connection whose reader reads straight from a TCP socket is not given
// a goroutine parked in Read for its whole life (2 KB of stack, most of an
// idle connection's memory). Its descriptor joins one epoll set instead
// (EPOLLIN|EPOLLRDHUP|EPOLLONESHOT; it stays in Go's own netpoller too),
// watched by one goroutine for the whole server; that goroutine waits in
// Go's netpoller for the epoll set's own descriptor to be readable, so no
// thread is blocked in epoll_wait. When the socket has data
// the poller starts a goroutine that reads and handles frames with the
// same readFrame as the goroutine path, while bytes are waiting, then
// re-arms the descriptor and exits.
//
// A frame that arrives in pieces is read with blocking reads bounded by
// the connection's deadline (the idle timeout since its last frame, or
// CloseWait once its close frame is out): a client that trickles a frame
// holds a goroutine no longer than its reader would have been held before.
//
// Deadlines of idle connections are the poller's: it sweeps them every
// sweepEvery and hands a connection whose deadline passed to a goroutine,
// whose read then fails with the deadline (the same "idle" end as before).
//
// Exactly one goroutine owns a connection's read side at a time (conn.busy,
// under the poller's lock); whichever ends it tears it down (conn.end). The
// descriptor leaves the epoll set before the socket is closed, so its
// number, reused at once by the kernel, never reaches the wrong connection;
// every epoll event also carries its registration's number.

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sweepEvery is how often the poller looks for idle connections whose
// deadline passed: how late, at most, an idle or close-wait deadline ends a
// silent connection.
const sweepEvery = 100 * time.Millisecond

// pollEvents are the events a watched descriptor is armed for, once.
const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

// poller is the server's epoll set and the goroutine that waits on it.
type poller struct {
	epfd int
	file *os.File        // epfd, in Go's netpoller
	rc   syscall.RawConn // file's
	base time.Time       // deadlines are monotonic offsets from base
	idle time.Duration
	log  *slog.Logger
	wait func(epfd int, events []unix.EpollEvent, msec int) (n int, err error) // unix.EpollWait

	mu      sync.Mutex
	stopped bool
	seq     uint32
	slots   []pollSlot // by descriptor number
}

// pollSlot is a watched connection (16 bytes: the sweep reads these in a
// row); the rest of its state is in the conn.
type pollSlot struct {
	c        *conn
	deadline time.Duration // since base
}

// closeSocket closes c's socket. A watched socket leaves the epoll set
// first, and a connection nobody is reading is handed to a goroutine that
// sees the end.
func (c *conn) closeSocket() error {
	if !c.polled {
		return c.nc.Close()
	}
	owned := c.srv.poll.remove(c)
	err := c.nc.Close()
	if owned {
		go c.pollRead() // its read fails at once: the end is seen there
	}
	return err
}

// setReadDeadline sets the read deadline of c's socket; for a watched one
// (the writer's CloseWait once the close frame is out) it becomes the
// poller's deadline too.
func (c *conn) setReadDeadline(t time.Time) error {
	if !c.polled {
		return c.nc.SetReadDeadline(t)
	}
	return c.srv.poll.setDeadline(c, t)
}

// newPoller returns the server's poller, its goroutine running until ctx
// ends; nil when epoll is not available (connections then read on their
// own goroutines).
func newPoller(ctx context.Context, cfg *Config) *poller {
	return startPoller(ctx, cfg, unix.EpollWait)
}

// startPoller is newPoller collecting events with wait.
func startPoller(ctx context.Context, cfg *Config, wait func(int, []unix.EpollEvent, int) (int, error)) *poller {
	if ctx.Err() != nil {
		return nil
	}
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err == nil {
		if err = unix.SetNonblock(fd, true); err != nil {
			_ = unix.Close(fd)
		}
	}
	if err != nil {
		cfg.Logger.Warn("websocket: no epoll, a goroutine per connection", "err", err)
		return nil
	}
	// The epoll set's own descriptor waits in Go's netpoller (it is
	// readable while events are ready): no thread sits in epoll_wait.
	f := os.NewFile(uintptr(fd), "websocket-epoll")
	rc, err := f.SyscallConn()
	if err == nil {
		err = f.SetReadDeadline(time.Time{}) // fails unless Go's netpoller took it
	}
	if err != nil {
		_ = f.Close()
		cfg.Logger.Warn("websocket: epoll set not pollable, a goroutine per connection", "err", err)
		return nil
	}
	p := &poller{epfd: fd, file: f, rc: rc, base: time.Now(), idle: cfg.IdleTimeout, log: cfg.Logger, wait: wait}
	go p.run(ctx)
	return p
}

func (p *poller) now() time.Duration { return time.Since(p.base) }

// pollable prepares c to be watched once admitted (c.polled: closing its
// socket and its close-wait deadline then go through the poller):
// only when its reader reads a TCP socket itself, so no bytes can wait in
// a buffer the descriptor's readiness does not show.
func (s *Server) pollable(c *conn) bool {
	if _, ok := c.rd.(*net.TCPConn); !ok || c.raw == nil {
		return false
	}
	s.pollOnce.Do(func() { s.poll = newPoller(s.ctx, &s.cfg) })
	if s.poll == nil {
		return false
	}
	c.polled = true
	return true
}

// add starts watching c, admitted; false when the poller has stopped or
// the socket is closing (c then reads on its own goroutine).
func (p *poller) add(c *conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped || c.unpolled {
		return false
	}
	added := false
	// Within Control the descriptor cannot be closed.
	err := c.raw.Control(func(u uintptr) {
		fd := int(u)
		if fd >= len(p.slots) {
			p.slots = append(p.slots, make([]pollSlot, fd+1-len(p.slots)+len(p.slots)/2)...)
		}
		if old := p.slots[fd].c; old != nil {
			// Not possible while every close goes through closeSocket;
			// if one did not, that connection still ends.
			p.drop(old)
		}
		p.seq++
		d := p.idle
		if c.sess.IsClosed() {
			d = c.srv.cfg.CloseWait // its close frame may be out already
		}
		c.pfd, c.pseq, c.busy = int32(fd), p.seq, false
		p.slots[fd] = pollSlot{c: c, deadline: p.now() + d}
		ev := unix.EpollEvent{Events: pollEvents, Fd: int32(fd), Pad: int32(p.seq)}
		if e := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); e != nil {
			p.slots[fd] = pollSlot{}
			return
		}
		added = true
	})
	return err == nil && added
}

// slot returns c's slot, or nil when c is not watched. Under p.mu.
func (p *poller) slot(c *conn) *pollSlot {
	if fd := int(c.pfd); fd < len(p.slots) && p.slots[fd].c == c {
		return &p.slots[fd]
	}
	return nil
}

// drop forgets c's slot (its descriptor is closed or leaving the set); c,
// if nobody was reading it, is handed to a goroutine that sees its end.
// Under p.mu.
func (p *poller) drop(c *conn) {
	if !c.busy {
		c.busy = true
		go c.pollRead()
	}
	p.slots[c.pfd] = pollSlot{}
}

// remove takes c out of the epoll set before its socket is closed, for
// good; owned reports that nobody was reading c, so the caller must hand
// it to a goroutine once the socket is closed.
func (p *poller) remove(c *conn) (owned bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c.unpolled = true
	s := p.slot(c)
	if s == nil {
		return false
	}
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(c.pfd), nil)
	*s = pollSlot{}
	owned = !c.busy
	c.busy = true
	return owned
}

// unpoll takes c out of the epoll set, if it is in it, as its teardown
// starts: its reader, the caller, owns it.
func (c *conn) unpoll() {
	if c.polled {
		c.srv.poll.remove(c)
	}
}

// setDeadline sets c's read deadline, on the socket and, while c is
// watched, in its slot.
func (p *poller) setDeadline(c *conn, t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s := p.slot(c); s != nil {
		s.deadline = t.Sub(p.base)
	}
	return c.nc.SetReadDeadline(t)
}

// armRead sets c's deadline on its socket for the frame its reader is
// about to read; false when c is no longer watched.
func (p *poller) armRead(c *conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.slot(c)
	if s == nil {
		return false
	}
	_ = c.nc.SetReadDeadline(p.base.Add(s.deadline))
	return true
}

// framed restarts c's idle clock after a frame, as the goroutine path does
// before each read: unless its session is closing (then the close-wait
// deadline stands). Under p.mu.
func (p *poller) framed(c *conn, s *pollSlot) {
	if !c.sess.IsClosed() {
		s.deadline = p.now() + p.idle
	}
}

// next is called after each frame c's reader handled; more says bytes are
// waiting. With more, c's reader goes on (true); otherwise c goes back to
// the poller: its descriptor is armed again (and fires at once if bytes
// came meanwhile) and its reader exits (false). When c is no longer
// watched its reader keeps it (true, and armRead says so).
func (p *poller) next(c *conn, more bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.slot(c)
	if s == nil {
		return true
	}
	p.framed(c, s)
	if more {
		return true
	}
	// While idle the deadline is the poller's alone: no runtime timer per
	// idle socket.
	_ = c.nc.SetReadDeadline(time.Time{})
	ev := unix.EpollEvent{Events: pollEvents, Fd: c.pfd, Pad: int32(c.pseq)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, int(c.pfd), &ev); err != nil {
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(c.pfd), nil)
		*s = pollSlot{}
		return true
	}
	c.busy = false
	return false
}

// run waits for readiness and sweeps deadlines until ctx ends; then every
// connection still watched is handed to a goroutine of its own (the
// goroutine path, until it ends) and the epoll set is closed.
func (p *poller) run(ctx context.Context) {
	events := make([]unix.EpollEvent, 256)
	var ready []*conn
	var n int
	var werr error
	collect := func(fd uintptr) bool { // false: nothing ready, wait for the set to be readable
		for {
			n, werr = p.wait(int(fd), events, 0)
			if !errors.Is(werr, unix.EINTR) {
				return n > 0 || werr != nil
			}
		}
	}
	next := p.now() + sweepEvery
	for {
		_ = p.file.SetReadDeadline(p.base.Add(next))
		err := p.rc.Read(collect)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded): // time to sweep
			n = 0
		case err == nil && werr == nil:
		default:
			p.log.Error("websocket: epoll failed, a goroutine per connection from now on", "err", errors.Join(err, werr))
			n = -1
		}
		p.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			if fd := int(ev.Fd); fd < len(p.slots) {
				if c := p.slots[fd].c; c != nil && c.pseq == uint32(ev.Pad) && !c.busy {
					c.busy = true
					ready = append(ready, c)
				}
			}
		}
		stop := n < 0 || ctx.Err() != nil
		if now := p.now(); now >= next || stop {
			next = now + sweepEvery
			for i := range p.slots {
				s := &p.slots[i]
				if s.c != nil && (stop || s.deadline <= now) && !s.c.busy {
					s.c.busy = true
					ready = append(ready, s.c)
				}
				if stop {
					*s = pollSlot{}
				}
			}
		}
		if stop {
			p.stopped = true
			_ = p.file.Close()
		}
		p.mu.Unlock()
		for i, c := range ready {
			go c.pollRead()
			ready[i] = nil
		}
		ready = ready[:0]
		if stop {
			return
		}
	}
}

// pollRead runs on a goroutine the poller started: c's socket has bytes
// (or its deadline passed, or it was closed). It reads and handles frames
// while bytes are waiting, then gives c back to the poller and exits; a
// connection that ends is torn down here. One no longer watched (the
// poller stopped) is read on here until it ends.
func (c *conn) pollRead() {
	defer c.srv.cfg.Hub.Recover(c.sess, c.abort)
	p := c.srv.poll
	for {
		if !p.armRead(c) {
			c.end(c.readLoop())
			return
		}
		if reason := c.readFrame(); reason != "" {
			c.end(reason)
			return
		}
		if !p.next(c, c.waiting()) {
			return
		}
	}
}

// waiting reports, without blocking, whether more of the client's bytes
// (or its end) wait on the socket.
func (c *conn) waiting() bool {
	more := true
	_ = c.raw.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if err != unix.EINTR {
				more = err != unix.EAGAIN
				return true
			}
		}
	})
	return more
}
