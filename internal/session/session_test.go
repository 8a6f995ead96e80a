package session

import "testing"

type nopTransport struct{ wakes, closes int }

func (n *nopTransport) Wake()              { n.wakes++ }
func (n *nopTransport) KeepAlive()         {}
func (n *nopTransport) Closed(int, string) { n.closes++ }

func TestQueueWakesOncePerBurstAndBoundsBytes(t *testing.T) {
	tr := &nopTransport{}
	s := New(1, "k", "test", tr, 10)
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
	s.Deliver(NewControl(EncWebSocket, []byte("ping"))) // control frames bypass the limit
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
