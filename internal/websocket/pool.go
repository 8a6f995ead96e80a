package websocket

import (
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/wspubsub/wspubsub/internal/session"
)

// stallSlice bounds how long one socket write may block a writer. A write
// that cannot finish in it keeps its remainder on the connection and is
// retried later, so a slow client never holds a writer for long; one that
// stays stuck past the write timeout is dropped.
const stallSlice = 20 * time.Millisecond

// A backlog of more than burstBacklog connections that grew since a
// writer's last batch makes it pause for burstPause (measured on 2 cores,
// 10,000 connections, 300,000 personal messages open loop, one writer:
// frames per write 4.4–4.6 → 7.4–7.5 with deliveries the same within noise;
// a pause before every batch of a long backlog gave 9.9 but slowed a lone
// broadcast, which this rule leaves alone).
const (
	burstBacklog = 256
	burstPause   = 300 * time.Microsecond
)

// writerPool flushes connections with a few writer goroutines fed by a
// queue of connections that have something to send. The number of socket
// writes, not bytes, is what costs, so frames are coalesced deliberately,
// in three ways:
//
//   - Under a burst the writers fall behind on purpose: there are only
//     GOMAXPROCS/2 of them (at least one; the helpers below stay out of a
//     burst), so the reading side keeps the other cores, and a connection
//     waiting in the queue gathers every message that reaches it meanwhile
//     into its one write.
//   - When the backlog grows while the writers work (messages arrive faster
//     than one write per connection carries them), a writer pauses for
//     burstPause before its next batch: the reading side (and, on a shared
//     box, Redis and the clients) gets the CPU, and each waiting connection
//     gathers more frames for its one write. A backlog that only shrinks (a
//     lone broadcast to every connection) is written without pauses.
//   - A hot connection (one flushed less than gap ago) is flushed at most
//     once per gap: it waits in a second queue until its gap has passed,
//     gathering frames meanwhile.
//
// A message to a connection that has not been written for gap goes out at
// once. Idle connections hold no writer goroutine and no buffer.
//
// Below a burst the cost is latency, not writes: a batch of connections
// written one after the other by one writer makes the last wait for all
// the others (at 20,000 messages/s in 1 ms batches, ≈ 20 writes). So with
// the default number of writers the other CPUs get helpers: a writer that
// takes a batch while the backlog is at most burstBacklog takes half and
// wakes a helper for the rest. A helper takes nothing from a larger
// backlog, so a burst is still written by the few writers that coalesce.
type writerPool struct {
	mu      sync.Mutex
	dirty   []*conn // to flush now
	later   []*conn // hot: to flush once their gap has passed (in submission order; each waits at most a gap)
	wake    chan struct{}
	help    chan struct{} // wakes a helper: a small batch was split
	workers int
	helpers int
	gap     time.Duration
	clock   func() int64 // nanoseconds on a monotonic clock, never 0 (tests stop it)
	pauses  func()       // counts a burst pause (metrics)
	seen    int          // the backlog when a writer last took a batch (under mu)
	once    sync.Once
}

// writer is a worker's reusable scratch space; with it a flush allocates
// nothing.
type writer struct {
	msgs []*session.Message
	bufs net.Buffers
	iov  []syscall.Iovec
	rest net.Buffers           // what writev still has to send
	err  error                 // writev's error, EAGAIN when the socket is full
	fn   func(fd uintptr) bool // w.writev, bound once
	// calls counts the system calls of the current write (for
	// wspubsub_socket_writes_total, added once per write).
	calls int
}

func newWriter() *writer {
	w := &writer{}
	w.fn = w.writev
	return w
}

// writev sends w.rest on fd without blocking, IOV_MAX buffers per call.
func (w *writer) writev(fd uintptr) bool {
	for len(w.rest) > 0 {
		w.iov = w.iov[:0]
		for _, b := range w.rest[:min(len(w.rest), maxIOV)] {
			if len(b) > 0 {
				v := syscall.Iovec{Base: &b[0]}
				v.SetLen(len(b))
				w.iov = append(w.iov, v)
			}
		}
		if len(w.iov) == 0 {
			w.rest = nil
			break
		}
		n, _, e := syscall.Syscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iov[0])), uintptr(len(w.iov)))
		if e == syscall.EINTR {
			continue
		}
		w.calls++
		if e != 0 {
			w.err = e
			break
		}
		w.rest = consume(w.rest, int(n))
	}
	clear(w.iov)
	return true
}

// newWriterPool returns a pool with workers writers (0: GOMAXPROCS/2, at
// least one, and a helper for each other CPU) that flushes a hot
// connection at most once per gap (0: at once, every time); pauses counts
// its burst pauses.
func newWriterPool(workers int, gap time.Duration, pauses func()) *writerPool {
	helpers := 0
	if workers <= 0 {
		workers = max(1, runtime.GOMAXPROCS(0)/2)
		helpers = max(0, runtime.GOMAXPROCS(0)-workers)
	}
	epoch := time.Now()
	return &writerPool{wake: make(chan struct{}, 1), help: make(chan struct{}, 1), workers: workers, helpers: helpers,
		gap: max(0, gap), clock: func() int64 { return int64(time.Since(epoch)) + 1 }, pauses: pauses}
}

func (p *writerPool) now() int64 { return p.clock() }

// hot reports whether c was written less than a gap ago.
func (p *writerPool) hot(c *conn, now int64) bool {
	f := c.flushed.Load()
	return f != 0 && now-f < int64(p.gap)
}

func (p *writerPool) submit(c *conn) {
	p.once.Do(func() {
		for range p.workers {
			go p.worker()
		}
		for range p.helpers {
			go p.helper()
		}
	})
	hot := p.gap > 0 && p.hot(c, p.now())
	p.mu.Lock()
	if hot {
		p.later = append(p.later, c)
	} else {
		p.dirty = append(p.dirty, c)
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// take removes up to n connections that are due from the queues; when none
// is, it says how long until the next hot one is (0: nothing waits).
// pause says the backlog is past burstBacklog and grew since the last take
// by at least half a batch: input outpaces the writers.
func (p *writerPool) take(dst []*conn, n int) (_ []*conn, wait time.Duration, pause bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	backlog := len(p.dirty) + len(p.later)
	pause = backlog > burstBacklog && backlog >= p.seen+n/2
	p.seen = backlog
	// Hot connections whose gap has passed join the ones to flush now.
	if len(p.later) > 0 {
		now, due := p.now(), 0
		for due < len(p.later) && !p.hot(p.later[due], now) {
			due++
		}
		p.dirty = append(p.dirty, p.later[:due]...)
		rest := copy(p.later, p.later[due:])
		clear(p.later[rest:])
		p.later = p.later[:rest]
	}
	k := min(n, len(p.dirty))
	split := p.helpers > 0 && k > 1 && backlog <= burstBacklog
	if split {
		k = (k + 1) / 2
	}
	dst = p.takeDirty(dst, k)
	if len(p.dirty) > 0 {
		select { // more left: let another worker in
		case p.wake <- struct{}{}:
		default:
		}
		if split {
			select {
			case p.help <- struct{}{}:
			default:
			}
		}
	}
	if k == 0 && len(p.later) > 0 {
		wait = max(time.Duration(int64(p.gap)-(p.now()-p.later[0].flushed.Load())), time.Microsecond)
	}
	p.seen -= k
	return dst, wait, pause
}

// takeDirty moves the first k connections of dirty to dst (under mu).
func (p *writerPool) takeDirty(dst []*conn, k int) []*conn {
	dst = append(dst[:0], p.dirty[:k]...)
	rest := copy(p.dirty, p.dirty[k:])
	clear(p.dirty[rest:])
	p.dirty = p.dirty[:rest]
	return dst
}

// takeHelp is a helper's take: half of what is due now (at most n), and
// nothing from a backlog past burstBacklog, which the writers coalesce.
func (p *writerPool) takeHelp(dst []*conn, n int) []*conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.dirty)+len(p.later) > burstBacklog {
		return dst[:0]
	}
	return p.takeDirty(dst, min(n, (len(p.dirty)+1)/2))
}

// helper flushes what a writer split off a small batch.
func (p *writerPool) helper() {
	w := newWriter()
	var batch []*conn
	for range p.help {
		for {
			if batch = p.takeHelp(batch, 32); len(batch) == 0 {
				break
			}
			p.flushAll(w, batch)
		}
	}
}

// flushAll flushes batch with w, and empties it.
func (p *writerPool) flushAll(w *writer, batch []*conn) {
	for i, c := range batch {
		if c.flush(w) {
			c.flushed.Store(p.now())
		}
		batch[i] = nil
	}
}

func (p *writerPool) worker() {
	w := newWriter()
	var batch []*conn
	var wait time.Duration
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		if wait > 0 {
			t.Reset(wait)
			select {
			case <-p.wake:
				t.Stop()
			case <-t.C:
			}
		} else {
			<-p.wake
		}
		for {
			var pause bool
			batch, wait, pause = p.take(batch, 32)
			if len(batch) == 0 {
				break
			}
			if pause {
				p.pauses()
				time.Sleep(burstPause)
			}
			p.flushAll(w, batch)
		}
	}
}
