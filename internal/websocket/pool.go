package websocket

import (
	"net"
	"time"

	"github.com/wspubsub/wspubsub/internal/session"
)

// writerPool runs connection flushes on a set of goroutines that grows when
// every worker is busy (a slow socket never delays another) and shrinks when
// workers sit idle, so idle connections hold no writer goroutine.
type writerPool struct {
	work chan *conn // unbuffered: a send succeeds only if a worker is idle
	idle time.Duration
}

// writer is a worker's reusable scratch space.
type writer struct {
	msgs []*session.Message
	bufs net.Buffers
}

func (p *writerPool) submit(c *conn) {
	select {
	case p.work <- c:
	default:
		go p.worker(c)
	}
}

func (p *writerPool) worker(c *conn) {
	w := &writer{}
	t := time.NewTimer(p.idle)
	defer t.Stop()
	for {
		c.flush(w)
		t.Reset(p.idle)
		select {
		case c = <-p.work:
		case <-t.C:
			return
		}
	}
}
