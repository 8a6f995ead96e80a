package websocket

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/session"
)

// writeCounts reads wspubsub_socket_writes_total and
// wspubsub_frames_written_total.
func (h *harness) writeCounts() (writes, frames float64) {
	return testutil.ToFloat64(h.m.SocketWrites), testutil.ToFloat64(h.m.FramesWritten)
}

// Every frame a client receives is counted once, and no write carries
// fewer than one frame.
func TestSocketWritesAndFramesCounted(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("good"), hub.Config{}, Config{})
	p := h.connect("good", "192.0.2.1")
	h.waitLive(1)
	const n = 20
	for i := range n {
		h.hub.Dispatch(fmt.Appendf(nil, `{"recipients":["good"],"data":%d}`, i))
	}
	for i := range n {
		p.expectText(fmt.Sprintf(`{"data":%d}`, i))
	}
	// The counters are added once the write returned: the client may read
	// the frames a moment before.
	waitFor(t, 5*time.Second, "20 frames counted", func() bool { _, f := h.writeCounts(); return f == n })
	if w, _ := h.writeCounts(); w < 1 || w > n {
		t.Fatalf("socket writes = %v for %d frames", w, n)
	}
	h.noRecoveredPanics()
}

// newRawConn is a connection on the server's raw writev path (the server
// side of a loopback TCP pair) with its own session, flushed by the test.
func newRawConn(t *testing.T, h *harness) (c *conn, client net.Conn) {
	t.Helper()
	client, s := h.tcpPair()
	c = &conn{srv: h.srv, nc: s, rd: s}
	var err error
	if c.raw, err = s.(*net.TCPConn).SyscallConn(); err != nil {
		t.Fatal(err)
	}
	c.sess = session.New(1, session.Peer{Key: "k"}, Name, nopWake{}, 1<<30)
	return c, client
}

// A flush of 16 queued frames is one writev carrying 16 frames; a lone
// frame is one write of one frame.
func TestSixteenQueuedFramesAreOneWrite(t *testing.T) {
	h := newHarness(t, keystore.NewMemory(), hub.Config{}, Config{})
	c, client := newRawConn(t, h)
	p := &peer{t: t, c: client}
	w := newWriter()
	for i := range 16 {
		c.sess.Deliver(session.NewMessage(fmt.Appendf(nil, `{"data":%d}`, i)))
	}
	c.flush(w)
	if wr, f := h.writeCounts(); wr != 1 || f != 16 {
		t.Fatalf("after 16 queued frames: %v writes, %v frames; want 1 and 16", wr, f)
	}
	c.sess.Deliver(session.NewMessage([]byte(`{"data":"lone"}`)))
	c.flush(w)
	if wr, f := h.writeCounts(); wr != 2 || f != 17 {
		t.Fatalf("after a lone frame: %v writes, %v frames; want 2 and 17", wr, f)
	}
	for i := range 16 {
		p.expectText(fmt.Sprintf(`{"data":%d}`, i))
	}
	p.expectText(`{"data":"lone"}`)
}

// A wrapped connection (no descriptor: net.Pipe here) counts one write per
// flush, whatever its wrapper does underneath.
func TestWrappedConnCountsOneWritePerFlush(t *testing.T) {
	h := newHarness(t, keystore.NewMemory(), hub.Config{}, Config{})
	client, s := net.Pipe()
	t.Cleanup(func() { client.Close(); s.Close() })
	c := &conn{srv: h.srv, nc: s, rd: s}
	c.sess = session.New(1, session.Peer{Key: "k"}, Name, nopWake{}, 1<<30)
	p := &peer{t: t, c: client}
	for i := range 4 {
		c.sess.Deliver(session.NewMessage(fmt.Appendf(nil, `{"data":%d}`, i)))
	}
	done := make(chan struct{})
	go func() { defer close(done); c.flush(newWriter()) }() // net.Pipe: each write waits for the reader
	for i := range 4 {
		p.expectText(fmt.Sprintf(`{"data":%d}`, i))
	}
	<-done
	if wr, f := h.writeCounts(); wr != 1 || f != 4 {
		t.Fatalf("%v writes, %v frames; want 1 and 4", wr, f)
	}
}

// A message the hub made (its payload with room before it) is framed in
// place: the same bytes as a freshly encoded frame, at every length
// boundary, with no allocation.
func TestFrameInRoomMatchesAndAllocatesNothing(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 70000} {
		payload := make([]byte, n)
		for i := range payload {
			payload[i] = byte('a' + i%26)
		}
		framed := append(make([]byte, envelope.FrameRoom, envelope.FrameRoom+n), payload...)
		m := session.NewFramed(framed, envelope.FrameRoom)
		got := m.EncodedInRoom(session.EncWebSocket, textFrameInRoom)
		if want := textFrame(payload); !bytes.Equal(got, want) {
			t.Fatalf("payload of %d bytes: framed in room differs from textFrame", n)
		}
		if n > 0 && &got[len(got)-1] != &framed[len(framed)-1] {
			t.Fatalf("payload of %d bytes: the frame is a copy", n)
		}
		// A message without room is framed by a copy, as before.
		if got := session.NewMessage(payload).EncodedInRoom(session.EncWebSocket, textFrameInRoom); !bytes.Equal(got, textFrame(payload)) {
			t.Fatalf("payload of %d bytes without room: wrong frame", n)
		}
	}
	room := make([]byte, envelope.FrameRoom, envelope.FrameRoom+64)
	payload := room[envelope.FrameRoom : envelope.FrameRoom+64]
	if a := testing.AllocsPerRun(100, func() { _ = textFrameInRoom(room, payload) }); a != 0 {
		t.Fatalf("framing in room allocates %v times", a)
	}
}
