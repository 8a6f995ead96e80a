package websocket

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// maxFragments bounds the frames of one client message: empty
// continuation frames cost no memory but a read and a header each, and a
// message made of endlessly many would be unbounded work.
const maxFragments = 1024

// defaultCloseWait bounds how long a server-initiated close waits for the
// client's close reply before the socket is dropped (Config.CloseWait).
const defaultCloseWait = 2 * time.Second

// conn is one WebSocket connection; it implements session.Transport.
// Its fields are ordered to keep it in a 160-byte allocation: an idle
// connection is mostly this struct, its session and the socket.
type conn struct {
	srv  *Server
	nc   net.Conn
	rd   net.Conn // nc, or the socket under a wrapper that only counts it (the reader's side)
	sess *session.Session
	raw  syscall.RawConn // the descriptor, for non-blocking writes (nil if wrapped)

	wmu        sync.Mutex // serialises socket writes between pool workers
	closeFrame atomic.Pointer[[]byte]
	pong       atomic.Pointer[[]byte] // the one pong owed (RFC 6455 §5.5.3: the latest ping's)
	// closeSent is made only by a teardown that must wait for the close
	// frame (an idle connection carries no channel); closeOut says the
	// frame is out, or can never be. See awaitClose and closeWritten.
	closeSent atomic.Pointer[chan struct{}]
	closeOut  atomic.Bool
	writeErr  atomic.Bool
	flushed   atomic.Int64 // when frames last went out, on the writer pool's clock (0: never)
	pending   []byte       // bytes of a stalled write still to send (under wmu)

	// A fragmented message being assembled, nil between messages (only
	// the reader touches it).
	frag *fragmented

	// The poller's view (netpoll.go; pfd, pseq, busy and unpolled under
	// its lock; polled is set before the connection is admitted).
	pfd      int32  // the descriptor, while watched
	pseq     uint32 // the registration's number, carried by its epoll events
	polled   bool   // the poller may watch the socket: close it and set its read deadline through it
	busy     bool   // a goroutine owns the read side (the descriptor is not armed)
	unpolled bool   // never (again) watched: the socket is closing

	slow bool // the slow lane owns the socket (under wmu)
	tls  bool // nc is a *tls.Conn: every write goes through the slow lane (write.go)
	// peerClosed: the client's close frame has been read (by whichever
	// goroutine owns the read side, which also runs the teardown).
	peerClosed bool
}

// admit checks the key through the hub; a rejected connection is closed
// with the hub's code and admit returns false.
func (c *conn) admit() bool {
	defer c.srv.cfg.Hub.Recover(c.sess, c.abort)
	err := c.srv.cfg.Hub.Admit(c.srv.ctx, c.sess)
	if err == nil {
		return true
	}
	c.sess.Close(hub.Verdict(err))
	c.awaitClose()
	c.srv.open.Add(-1)
	return false
}

// serve runs on the connection's own goroutine (a connection the poller
// does not watch): the read loop, then teardown.
func (c *conn) serve() {
	defer c.srv.cfg.Hub.Recover(c.sess, c.abort)
	c.end(c.readLoop())
}

// end tears the connection down, once, on the goroutine whose read saw it
// end: the hub lets the session go with reason, the client gets its close
// frame (and is given CloseWait to answer it), the socket is closed.
func (c *conn) end(reason string) {
	c.unpoll()
	if c.writeErr.Load() {
		reason = metrics.DiscWriteError
	}
	c.srv.cfg.Hub.Leave(c.sess, reason)
	if !c.sess.IsClosed() {
		c.sess.Close(session.CloseNormal, "")
	}
	if reason != metrics.DiscIdle && reason != metrics.DiscWriteError {
		c.awaitClose()
	}
	_ = c.closeSocket()
	c.srv.open.Add(-1)
}

// abort is the teardown after a recovered panic (Hub.Recover has closed
// the session with 1011 and let it go).
func (c *conn) abort() {
	c.awaitClose()
	c.srv.open.Add(-1)
}

// awaitClose waits until the close frame has been written (bounded), then,
// unless the client's close frame has been read already, reads up to its
// close reply (bounded by CloseWait), and closes the socket: RFC 6455 has
// the server close the TCP connection first, and clients (browsers, Node)
// wait for that before they report the close, so it must follow the close
// reply at once rather than wait for the client to hang up.
func (c *conn) awaitClose() {
	if c.closeFrameOut() && !c.peerClosed {
		_ = c.setReadDeadline(time.Now().Add(c.srv.cfg.CloseWait))
		drainUntilClose(io.LimitReader(c.nc, 1<<16))
	}
	_ = c.closeSocket()
}

// drainUntilClose discards the client's frames up to and including its
// close frame (read whole: bytes left unread would turn the socket's close
// into a reset), or until r ends or fails.
func drainUntilClose(r io.Reader) {
	for {
		h, err := ws.ReadHeader(r)
		if err != nil {
			return
		}
		if _, err := io.CopyN(io.Discard, r, h.Length); err != nil || h.OpCode == ws.OpClose {
			return
		}
	}
}

// closeFrameOut waits, at most the write timeout, for the close frame to go
// out, and reports whether it did (or can never: nothing is left to wait for).
func (c *conn) closeFrameOut() bool {
	ch := make(chan struct{})
	if !c.closeSent.CompareAndSwap(nil, &ch) {
		ch = *c.closeSent.Load()
	}
	// closeWritten stores closeOut before it loads closeSent, and this
	// stored closeSent before it loads closeOut: at least one of the two
	// sees the other, so the frame going out is never missed.
	if c.closeOut.Load() {
		return true
	}
	t := time.NewTimer(c.srv.cfg.WriteTimeout)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// closeWritten records that the close frame is out, or can never be, and
// releases a teardown waiting in awaitClose.
func (c *conn) closeWritten() {
	if c.closeOut.Swap(true) {
		return
	}
	if ch := c.closeSent.Load(); ch != nil {
		close(*ch)
	}
}

// readLoop reads client frames until the connection ends and says why; a
// connection with no frame for the idle timeout is dead.
func (c *conn) readLoop() string {
	for {
		if !c.sess.IsClosed() {
			_ = c.rd.SetReadDeadline(time.Now().Add(c.srv.cfg.IdleTimeout))
		}
		if reason := c.readFrame(); reason != "" {
			return reason
		}
	}
}

// readFrame reads one client frame from c.rd and handles it; it returns
// why the connection must end, or "" to go on. It is the one frame handler
// of both read paths (readLoop's own goroutine, and the poller's, which
// reads one frame at a time). Every header field is hostile: sizes are
// compared without overflow and refused before anything is allocated.
func (c *conn) readFrame() string {
	hdr, err := ws.ReadHeader(c.rd)
	if err != nil {
		if errors.Is(err, ws.ErrHeaderLengthMSB) || errors.Is(err, ws.ErrHeaderLengthUnexpected) {
			return c.protocolError("bad frame length")
		}
		return readErrReason(err)
	}
	switch {
	case !hdr.Masked:
		return c.protocolError("unmasked client frame")
	case hdr.Rsv != 0:
		return c.protocolError("reserved bits set") // no extension was negotiated
	case hdr.OpCode.IsControl() && (hdr.Length > 125 || !hdr.Fin):
		return c.protocolError("bad control frame")
	case hdr.OpCode == ws.OpContinuation && c.frag == nil:
		return c.protocolError("continuation without a message")
	case hdr.OpCode == ws.OpContinuation && c.frag.frames >= maxFragments:
		c.sess.Close(session.CloseTooBig, "too many fragments")
		return metrics.DiscTooBig
	case (hdr.OpCode == ws.OpText || hdr.OpCode == ws.OpBinary) && c.frag != nil:
		return c.protocolError("new message inside a fragmented one")
	// Control frames (≤ 125 bytes, checked above) may come between a
	// message's fragments (RFC 6455 §5.4): they do not count towards it.
	case hdr.Length < 0 || !hdr.OpCode.IsControl() && hdr.Length > int64(c.srv.cfg.MaxFrameBytes-c.fragLen()):
		c.sess.Close(session.CloseTooBig, "message too big")
		return metrics.DiscTooBig
	}
	payload := make([]byte, hdr.Length)
	if _, err := io.ReadFull(c.rd, payload); err != nil {
		return readErrReason(err)
	}
	ws.Cipher(payload, hdr.Mask, 0)
	switch hdr.OpCode {
	case ws.OpPing:
		// Only the latest ping is answered: a client that pings and
		// never reads holds one pong, not a queue of them.
		f := ws.MustCompileFrame(ws.NewPongFrame(payload))
		c.pong.Store(&f)
		c.srv.pool.submit(c)
	case ws.OpPong:
	case ws.OpClose:
		code, _ := ws.ParseCloseFrameData(payload)
		if code == 0 || code.IsProtocolReserved() {
			code = ws.StatusNormalClosure
		}
		c.sess.CloseByPeer(int(code))
		c.peerClosed = true
		return metrics.DiscClient
	case ws.OpText, ws.OpBinary:
		if hdr.Fin { // a whole message in one frame, the usual case: no copy
			return c.onMessage(payload)
		}
		c.frag = &fragmented{buf: payload, frames: 1}
	case ws.OpContinuation:
		c.frag.buf = append(c.frag.buf, payload...)
		c.frag.frames++
		if hdr.Fin {
			// The buffer goes with the message: none is held between them.
			msg := c.frag.buf
			c.frag = nil
			return c.onMessage(msg)
		}
	default:
		return c.protocolError("unknown opcode")
	}
	return ""
}

// fragmented is a message being assembled from its frames.
type fragmented struct {
	buf    []byte
	frames int // the frames it has had: at most maxFragments
}

// fragLen is the length of the fragmented message being assembled.
func (c *conn) fragLen() int {
	if c.frag == nil {
		return 0
	}
	return len(c.frag.buf)
}

// protocolError closes the connection with 1002 for a frame that breaks
// RFC 6455.
func (c *conn) protocolError(why string) string {
	c.sess.Close(session.CloseProtocol, why)
	return metrics.DiscProtocol
}

// onMessage hands one complete client message to the hub and sends its
// reply ("heartbeat message" for "ping"); it returns the disconnect reason
// when the client must be closed (rate exceeded, text not UTF-8).
func (c *conn) onMessage(msg []byte) string {
	if !utf8.Valid(msg) { // RFC 6455 §8.1; binary frames are held to it too
		c.sess.Close(session.CloseInvalidData, "invalid UTF-8")
		return metrics.DiscInvalidData
	}
	reply, err := c.srv.cfg.Hub.ClientText(c.sess, msg)
	if errors.Is(err, hub.ErrRateLimited) {
		c.sess.Close(session.CloseRateLimited, "rate limited")
		return metrics.DiscRateLimited
	}
	if reply != nil {
		c.sess.Deliver(c.srv.heartbeat)
	}
	return ""
}

func readErrReason(err error) string {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return metrics.DiscIdle
	}
	return metrics.DiscClient
}
