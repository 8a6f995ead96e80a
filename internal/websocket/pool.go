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

// writerPool flushes connections with a few writer goroutines fed by a
// queue of connections that have something to send. Under load a
// connection waits in the queue while more messages reach it, so each write
// carries more frames: the number of socket writes, not bytes, is what
// costs. Idle connections hold no writer goroutine and no buffer.
type writerPool struct {
	mu      sync.Mutex
	dirty   []*conn
	wake    chan struct{}
	workers int
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

func newWriterPool() *writerPool {
	return &writerPool{wake: make(chan struct{}, 1), workers: max(4, 2*runtime.GOMAXPROCS(0))}
}

func (p *writerPool) submit(c *conn) {
	p.once.Do(func() {
		for range p.workers {
			go p.worker()
		}
	})
	p.mu.Lock()
	p.dirty = append(p.dirty, c)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// take removes up to n connections from the queue.
func (p *writerPool) take(dst []*conn, n int) []*conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := min(n, len(p.dirty))
	dst = append(dst[:0], p.dirty[:k]...)
	rest := copy(p.dirty, p.dirty[k:])
	clear(p.dirty[rest:])
	p.dirty = p.dirty[:rest]
	if rest > 0 {
		select { // more left: let another worker in
		case p.wake <- struct{}{}:
		default:
		}
	}
	return dst
}

func (p *writerPool) worker() {
	w := newWriter()
	var batch []*conn
	for range p.wake {
		for {
			batch = p.take(batch, 32)
			if len(batch) == 0 {
				break
			}
			for i, c := range batch {
				c.flush(w)
				batch[i] = nil
			}
		}
	}
}
