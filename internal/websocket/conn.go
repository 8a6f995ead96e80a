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

// closeWait bounds how long a server-initiated close waits for the client's
// close reply before the socket is dropped.
const closeWait = 2 * time.Second

// conn is one WebSocket connection; it implements session.Transport.
type conn struct {
	srv  *Server
	nc   net.Conn
	rd   net.Conn // nc, or the socket under a wrapper that only counts it (the reader's side)
	sess *session.Session

	wmu        sync.Mutex // serialises socket writes between pool workers
	closeFrame atomic.Pointer[[]byte]
	pong       atomic.Pointer[[]byte] // the one pong owed (RFC 6455 §5.5.3: the latest ping's)
	closeSent  chan struct{}          // closed once the close frame is out, or can never be
	closeDone  sync.Once
	writeErr   atomic.Bool
	pending    []byte          // bytes of a stalled write still to send (under wmu)
	slow       bool            // the slow lane owns the socket (under wmu)
	raw        syscall.RawConn // the descriptor, for non-blocking writes (nil if wrapped)
	flushed    atomic.Int64    // when frames last went out, on the writer pool's clock (0: never)
}

// admit checks the key through the hub; a rejected connection is closed
// with the hub's code and admit returns false.
func (c *conn) admit() bool {
	defer c.srv.cfg.Hub.Recover(c.sess, func() { c.awaitClose(); c.srv.open.Add(-1) })
	err := c.srv.cfg.Hub.Admit(c.srv.ctx, c.sess)
	if err == nil {
		return true
	}
	c.sess.Close(hub.Verdict(err))
	c.awaitClose()
	c.srv.open.Add(-1)
	return false
}

// serve runs on the connection's goroutine: the read loop, then teardown.
func (c *conn) serve() {
	defer c.srv.open.Add(-1)
	defer c.srv.cfg.Hub.Recover(c.sess, c.awaitClose)
	reason := c.readLoop()
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
	_ = c.nc.Close()
}

// awaitClose waits until the close frame has been written (bounded), then
// drains the client's reply so it sees a clean close, and closes the socket.
func (c *conn) awaitClose() {
	t := time.NewTimer(c.srv.cfg.WriteTimeout)
	defer t.Stop()
	select {
	case <-c.closeSent:
		_ = c.nc.SetReadDeadline(time.Now().Add(closeWait))
		_, _ = io.Copy(io.Discard, io.LimitReader(c.nc, 1<<16))
	case <-t.C:
	}
	_ = c.nc.Close()
}

// readLoop reads client frames until the connection ends and says why.
// Every header field is hostile: sizes are compared without overflow and
// refused before anything is allocated.
func (c *conn) readLoop() string {
	cfg := &c.srv.cfg
	var msg []byte // a fragmented message being assembled
	fragmented := false
	for {
		if !c.sess.IsClosed() {
			_ = c.rd.SetReadDeadline(time.Now().Add(cfg.IdleTimeout))
		}
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
		case hdr.OpCode == ws.OpContinuation && !fragmented:
			return c.protocolError("continuation without a message")
		case (hdr.OpCode == ws.OpText || hdr.OpCode == ws.OpBinary) && fragmented:
			return c.protocolError("new message inside a fragmented one")
		// Control frames (≤ 125 bytes, checked above) may come between a
		// message's fragments (RFC 6455 §5.4): they do not count towards it.
		case hdr.Length < 0 || !hdr.OpCode.IsControl() && hdr.Length > int64(cfg.MaxFrameBytes-len(msg)):
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
			return metrics.DiscClient
		case ws.OpText, ws.OpBinary, ws.OpContinuation:
			if hdr.OpCode != ws.OpContinuation {
				msg = msg[:0]
			}
			msg = append(msg, payload...)
			fragmented = !hdr.Fin
			if hdr.Fin {
				if reason := c.onMessage(msg); reason != "" {
					return reason
				}
				msg = msg[:0]
			}
		default:
			return c.protocolError("unknown opcode")
		}
	}
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
