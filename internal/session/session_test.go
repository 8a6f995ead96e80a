package session

import (
	"strconv"
	"testing"
	"unsafe"
)

type nopTransport struct{ wakes, closes int }

func (n *nopTransport) Wake()              { n.wakes++ }
func (n *nopTransport) KeepAlive()         {}
func (n *nopTransport) Closed(int, string) { n.closes++ }

func TestQueueWakesOncePerBurstAndBoundsBytes(t *testing.T) {
	tr := &nopTransport{}
	s := New(1, Peer{Key: "k"}, "test", tr, 12)
	m := NewMessage([]byte("1234"))
	if !s.Deliver(m) || !s.Deliver(m) {
		t.Fatal("delivery refused under the limit")
	}
	if tr.wakes != 1 {
		t.Fatalf("wakes = %d", tr.wakes)
	}
	if got := s.Drain(nil); len(got) != 2 {
		t.Fatalf("drained %d", len(got))
	}
	if got := s.Drain(nil); len(got) != 0 {
		t.Fatal("queue not empty")
	}
	s.Deliver(m) // empty again: wakes again
	if tr.wakes != 2 {
		t.Fatalf("wakes = %d", tr.wakes)
	}
	s.Deliver(m)
	s.Deliver(NewControl(EncWebSocket, []byte("pi"))) // control frames count too: 10 of 12 bytes
	if s.Deliver(m) {
		t.Fatal("overflow accepted")
	}
	if !s.IsClosed() || s.CloseCode() != CloseTooSlow || tr.closes != 1 {
		t.Fatalf("closed=%v code=%d closes=%d", s.IsClosed(), s.CloseCode(), tr.closes)
	}
	if len(s.Drain(nil)) != 0 {
		t.Fatal("overflowed queue not discarded")
	}
	s.Close(CloseNormal, "")
	if tr.closes != 1 || s.CloseCode() != CloseTooSlow {
		t.Fatal("second close not ignored")
	}
}

func TestEncodedOnce(t *testing.T) {
	m := NewMessage([]byte("x"))
	calls := 0
	enc := func(p []byte) []byte { calls++; return append([]byte("<"), p...) }
	for range 3 {
		if string(m.Encoded(EncWebSocket, enc)) != "<x" {
			t.Fatal("bad encoding")
		}
	}
	if calls != 1 {
		t.Fatalf("encoded %d times", calls)
	}
}

func TestControlFramesCountAgainstTheLimit(t *testing.T) {
	tr := &nopTransport{}
	s := New(1, Peer{Key: "k"}, "test", tr, 100)
	pong := NewControl(EncWebSocket, make([]byte, 127))
	if s.Deliver(pong) || s.CloseCode() != CloseTooSlow {
		t.Fatalf("a control message over the limit was queued (code %d)", s.CloseCode())
	}
}

func TestPeerCloseIsNotAVerdict(t *testing.T) {
	s := New(1, Peer{Key: "k"}, "test", &nopTransport{}, 100)
	s.CloseByPeer(1000)
	if !s.ClosedByPeer() || s.CloseCode() != 1000 {
		t.Fatal("peer close not recorded")
	}
	s2 := New(2, Peer{Key: "k"}, "test", &nopTransport{}, 100)
	s2.Close(CloseRevoked, "revoked")
	s2.CloseByPeer(1000)
	if s2.ClosedByPeer() || s2.CloseCode() != CloseRevoked {
		t.Fatal("a peer close after the server's overrode it")
	}
}

// An idle connection's memory is a product goal (BENCHMARKS.md): the
// session is one allocation in the 192-byte size class, and a field more
// moves every connection to the next class (224 bytes).
func TestSessionFitsItsSizeClass(t *testing.T) {
	if strconv.IntSize != 64 {
		t.Skip("sizes are measured on 64-bit platforms")
	}
	if n := unsafe.Sizeof(Session{}); n > 192 {
		t.Fatalf("Session is %d bytes, more than its 192-byte size class: keep per-session extras behind a pointer (identity, resume)", n)
	}
}
