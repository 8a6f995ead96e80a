package websocket

import (
	"net"
	"runtime"
	"sync"
	"time"

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
	spare   []*conn
	wake    chan struct{}
	workers int
	once    sync.Once
}

// writer is a worker's reusable scratch space.
type writer struct {
	msgs []*session.Message
	bufs net.Buffers
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
	w := &writer{}
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
