package websocket

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/gobwas/ws"

	"github.com/wspubsub/wspubsub/internal/session"
)

// Wake implements session.Transport.
func (c *conn) Wake() { c.srv.pool.submit(c) }

// KeepAlive implements session.Transport: a ping the client must answer
// within the idle timeout.
func (c *conn) KeepAlive() { c.sess.Deliver(c.srv.ping) }

// Closed implements session.Transport: the close frame goes out after
// whatever is still queued.
func (c *conn) Closed(code int, reason string) {
	f := ws.MustCompileFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusCode(code), reason)))
	c.closeFrame.Store(&f)
	c.srv.pool.submit(c)
}

// flush writes everything queued in one writev, then the close frame if
// one is pending, after whatever was queued before the close (even while
// that first write went out). What is queued meanwhile waits for the next
// flush (the session wakes the pool again), so a hot connection gathers it
// instead of costing another write at once. A write that stalls hands the
// connection to its slow lane. flush reports whether it wrote.
func (c *conn) flush(w *writer) (wrote bool) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	defer c.srv.cfg.Hub.Recover(c.sess, c.fail)
	if c.writeErr.Load() || c.slow {
		return false // the slow lane owns the socket until it catches up
	}
	wrote, ok := c.writeQueued(w)
	if !ok {
		return true
	}
	if f := c.closeFrame.Swap(nil); f != nil {
		// What was queued while the write above went out was queued
		// before the close (the session takes nothing once closed, and it
		// is closed before the frame is stored): it goes first, never
		// after the close frame.
		if _, ok := c.writeQueued(w); !ok {
			c.closeFrame.Store(f) // sent once the slow lane hands the socket back
			return true
		}
		wrote = true
		w.bufs = append(w.bufs[:0], *f)
		c.write(w)
		// The reader now waits only briefly for the client's close reply.
		_ = c.setReadDeadline(time.Now().Add(c.srv.cfg.CloseWait))
		c.closeWritten()
	}
	return wrote
}

// writeQueued writes the pending pong and every queued message in one
// write; wrote says there was something, ok that the socket took it all
// (else the slow lane has the rest, or the connection failed).
func (c *conn) writeQueued(w *writer) (wrote, ok bool) {
	w.msgs = c.sess.Drain(w.msgs)
	w.bufs = w.bufs[:0]
	if p := c.pong.Swap(nil); p != nil {
		w.bufs = append(w.bufs, *p)
	}
	for _, m := range w.msgs {
		w.bufs = append(w.bufs, m.EncodedInRoom(session.EncWebSocket, textFrameInRoom))
	}
	clear(w.msgs)
	if len(w.bufs) == 0 {
		return false, true
	}
	return true, c.write(w)
}

// write sends bufs without blocking a writer on one slow socket: a
// non-blocking writev straight on the descriptor (no deadline, no poller
// round trip), or, for wrapped connections, a write bounded by stallSlice.
// What the socket cannot take now moves to the connection's slow lane and
// write reports false; on an error the connection is dropped.
func (c *conn) write(w *writer) bool {
	bufs := w.bufs
	defer clear(bufs)
	rest, err := c.writeNow(w)
	// One add per write, not per frame: every buffer is one frame.
	c.srv.cfg.Metrics.SocketWrites.Add(float64(w.calls))
	c.srv.cfg.Metrics.FramesWritten.Add(float64(len(bufs)))
	if err == nil {
		return true
	}
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, os.ErrDeadlineExceeded) || err == errTLSWrite {
		for _, part := range rest {
			c.pending = append(c.pending, part...)
		}
		c.slow = true
		if err != errTLSWrite {
			c.srv.cfg.Metrics.WriteStalls.Inc()
		}
		go c.slowLane()
		return false
	}
	c.fail()
	return false
}

// writeNow writes what the socket takes at once of w.bufs and returns the
// rest; w.calls is the number of system calls it took (one for a wrapped
// connection: its wrapper's writes are not seen).
func (c *conn) writeNow(w *writer) (net.Buffers, error) {
	w.calls = 0
	if c.raw == nil {
		if c.tls {
			return w.bufs, errTLSWrite
		}
		w.calls = 1
		_ = c.nc.SetWriteDeadline(time.Now().Add(stallSlice))
		b := w.bufs
		_, err := b.WriteTo(c.nc)
		return b, err
	}
	w.rest, w.err = w.bufs, nil
	if err := c.raw.Write(w.fn); err != nil {
		return w.rest, err
	}
	return w.rest, w.err
}

// errTLSWrite hands a TLS connection's write to the slow lane: crypto/tls
// breaks a connection for good once a write hits its deadline, so a TLS
// write may not be cut at stallSlice; the slow lane's goroutine waits the
// full write timeout instead, and no pool writer waits on it.
var errTLSWrite = errors.New("tls: written by the slow lane")

func (c *conn) fail() {
	c.writeErr.Store(true)
	c.closeWritten()    // no close frame will go out: nothing to wait for
	_ = c.closeSocket() // unblocks the reader, which reports the end
}

// slowLane serves a connection whose socket stopped taking data: on its own
// goroutine it writes the remainder and whatever queues up meanwhile, each
// write allowed the full write timeout, until the queue is empty; then the
// writer pool takes over again. The netpoller wakes it the moment the
// client reads, so a slow client that keeps reading loses nothing; one that
// stops is dropped at the write timeout or closed with 4008 when its queue
// overflows.
func (c *conn) slowLane() {
	defer c.srv.cfg.Hub.Recover(c.sess, c.fail)
	var msgs []*session.Message
	for {
		c.wmu.Lock()
		data := c.pending
		c.pending = nil
		frames := 0 // new in this write (a stalled write's remainder was counted)
		if len(data) == 0 {
			if p := c.pong.Swap(nil); p != nil {
				data = append(data, *p...)
				frames++
			}
			msgs = c.sess.Drain(msgs)
			for i, m := range msgs {
				data = append(data, m.EncodedInRoom(session.EncWebSocket, textFrameInRoom)...)
				msgs[i] = nil
			}
			frames += len(msgs)
		}
		if len(data) == 0 {
			c.slow = false
			c.wmu.Unlock()
			c.srv.pool.submit(c) // a close frame may be waiting
			return
		}
		c.wmu.Unlock()
		c.srv.cfg.Metrics.SocketWrites.Inc()
		c.srv.cfg.Metrics.FramesWritten.Add(float64(frames))
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
		if _, err := c.nc.Write(data); err != nil {
			c.wmu.Lock()
			c.fail()
			c.wmu.Unlock()
			return
		}
	}
}

// textFrame encodes payload as one unmasked text frame.
func textFrame(payload []byte) []byte {
	h := ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(len(payload))}
	out := make([]byte, 0, ws.HeaderSize(h)+len(payload))
	w := sliceWriter{&out}
	_ = ws.WriteHeader(w, h)
	return append(out, payload...)
}

// textFrameInRoom is textFrame for a payload with room before it in its
// array: the header (RFC 6455 §5.2: FIN and text opcode, then a 7-bit,
// 16-bit or 64-bit length, no mask) is written at the end of the room and
// the frame is the room's tail extended over the payload — no allocation,
// no copy of the payload.
func textFrameInRoom(room, payload []byte) []byte {
	n := len(payload)
	var hdr [10]byte
	hdr[0] = 0x80 | byte(ws.OpText)
	h := 2
	switch {
	case n < 126:
		hdr[1] = byte(n)
	case n <= 0xffff:
		hdr[1] = 126
		binary.BigEndian.PutUint16(hdr[2:], uint16(n))
		h = 4
	default:
		hdr[1] = 127
		binary.BigEndian.PutUint64(hdr[2:], uint64(n))
		h = 10
	}
	if len(room) < h || cap(room) < len(room)+n {
		return textFrame(payload)
	}
	frame := room[len(room)-h : len(room)+n]
	copy(frame, hdr[:h])
	return frame
}

type sliceWriter struct{ b *[]byte }

func (w sliceWriter) Write(p []byte) (int, error) { *w.b = append(*w.b, p...); return len(p), nil }

// maxIOV is the kernel's limit on buffers per writev (IOV_MAX).
const maxIOV = 1024

// consume drops the first n bytes of b (without touching the shared frames).
func consume(b net.Buffers, n int) net.Buffers {
	for len(b) > 0 && n >= len(b[0]) {
		n -= len(b[0])
		b = b[1:]
	}
	if len(b) > 0 && n > 0 {
		b[0] = b[0][n:]
	}
	return b
}
