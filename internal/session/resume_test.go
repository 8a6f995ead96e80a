package session

import (
	"fmt"
	"strings"
	"testing"
)

// rec is the recorded message of number n in history epoch "e" (ids
// e.<n>-0), as the hub builds it for a resuming session.
func rec(t *testing.T, epoch string, n int) *Message {
	t.Helper()
	m, ok := NewRecorded(fmt.Sprintf("%s.%d-0", epoch, n), fmt.Appendf(nil, `{"data":%d}`, n))
	if !ok {
		t.Fatalf("NewRecorded %s %d refused", epoch, n)
	}
	return m
}

func resuming(since string, limit int) (*Session, *nopTransport) {
	tr := &nopTransport{}
	return New(1, Peer{Key: "k", Resume: true, Since: since}, "test", tr, limit), tr
}

func queued(s *Session) string {
	var out []string
	for _, m := range s.Drain(nil) {
		out = append(out, string(m.Payload))
	}
	return strings.Join(out, " ")
}

func TestResumeRecordedFormPutsTheIDFirst(t *testing.T) {
	m, ok := NewRecorded("e.5-1", []byte(`{"data":{"a":1.50e2},"x":null}`))
	if !ok || string(m.Payload) != `{"id":"e.5-1","data":{"a":1.50e2},"x":null}` || m.ID != "e.5-1" {
		t.Fatalf("recorded form %s (%v)", m.Payload, ok)
	}
	for _, id := range []string{"", "x", "e.5", "E.5-1", "e.a-1", strings.Repeat("e", 70) + ".1-1"} {
		if _, ok := NewRecorded(id, []byte(`{"data":1}`)); ok {
			t.Errorf("id %q accepted", id)
		}
	}
	if _, ok := NewRecorded("e.1-0", []byte(`[1]`)); ok {
		t.Error("a payload that is not an object accepted")
	}
}

// History first, then what was held back while it was read; an id given
// already (by the history, or twice in the held list, or older than the
// client's since) is dropped, whatever the order it arrives in.
func TestResumeReplayHistoryThenHeldOnceInOrder(t *testing.T) {
	s, tr := resuming("e.1-0", 1<<20)
	if !s.Resumes() || s.LastID() != "e.1-0" {
		t.Fatalf("resumes=%v last=%s", s.Resumes(), s.LastID())
	}
	if !s.Hold() || s.Hold() {
		t.Fatal("Hold: first must succeed, a second (already held) must not")
	}
	// Published while the history is read: held, nothing queued yet.
	for _, n := range []int{3, 4, 3, 2, 5} {
		if !s.Deliver(rec(t, "e", n)) {
			t.Fatalf("held delivery of %d refused", n)
		}
	}
	if tr.wakes != 0 || len(s.Drain(nil)) != 0 {
		t.Fatal("a held message was queued before Replay")
	}
	// A live message without id (plain PUBLISH) is not held: at most once,
	// no order promised.
	s.Deliver(NewMessage([]byte(`{"data":"plain"}`)))
	if got := queued(s); got != `{"data":"plain"}` {
		t.Fatalf("plain message while holding: %q", got)
	}
	s.Replay(false, "", []*Message{rec(t, "e", 1), rec(t, "e", 2), rec(t, "e", 3)})
	want := `{"id":"e.2-0","data":2} {"id":"e.3-0","data":3} {"id":"e.4-0","data":4} {"id":"e.5-0","data":5}`
	if got := queued(s); got != want {
		t.Fatalf("replayed\n got %s\nwant %s", got, want)
	}
	if s.LastID() != "e.5-0" {
		t.Fatalf("last id %s", s.LastID())
	}
	// Live again: old or repeated ids are dropped without closing the session.
	if s.Deliver(rec(t, "e", 4)) || s.Deliver(rec(t, "e", 5)) {
		t.Fatal("an id given already was delivered again")
	}
	if !s.Deliver(rec(t, "e", 6)) || queued(s) != `{"id":"e.6-0","data":6}` {
		t.Fatal("the next id was not delivered")
	}
	if s.IsClosed() {
		t.Fatal("dropping a duplicate closed the session")
	}
	if !s.Hold() {
		t.Fatal("Hold after Replay must succeed again (a resync)")
	}
}

// A gap: the gap frame comes first, then everything the history holds,
// also from a new epoch (Redis lost the history), and the held messages.
func TestResumeGapFrameFirst(t *testing.T) {
	s, _ := resuming("old.9-0", 1<<20)
	s.Hold()
	s.Deliver(rec(t, "new", 2))
	s.Deliver(rec(t, "new", 3))
	s.Replay(true, "", []*Message{rec(t, "new", 1), rec(t, "new", 2)})
	want := `{"gap":true} {"id":"new.1-0","data":1} {"id":"new.2-0","data":2} {"id":"new.3-0","data":3}`
	if got := queued(s); got != want {
		t.Fatalf("gap replay\n got %s\nwant %s", got, want)
	}
	if s.LastID() != "new.3-0" {
		t.Fatalf("last id %s", s.LastID())
	}
	// Same epoch, trimmed past the client's id: everything held follows.
	s2, _ := resuming("e.1-0", 1<<20)
	s2.Hold()
	s2.Replay(true, "", []*Message{rec(t, "e", 5), rec(t, "e", 6)})
	if got := queued(s2); got != `{"gap":true} {"id":"e.5-0","data":5} {"id":"e.6-0","data":6}` {
		t.Fatalf("trimmed gap: %s", got)
	}
	// A gap with nothing held: the frame alone; the next live id follows.
	s3, _ := resuming("garbage", 1<<20)
	s3.Hold()
	s3.Replay(true, "", nil)
	s3.Deliver(rec(t, "x", 1))
	if got := queued(s3); got != `{"gap":true} {"id":"x.1-0","data":1}` {
		t.Fatalf("empty gap: %s", got)
	}
}

// since empty ("from now"): the position frame, carrying its id, comes
// first; a held message at or before the position is not given.
func TestResumePositionFrame(t *testing.T) {
	s, _ := resuming("", 1<<20)
	s.Hold()
	s.Deliver(rec(t, "e", 7))
	s.Deliver(rec(t, "e", 8))
	s.Replay(false, "e.7-0", nil)
	ms := s.Drain(nil)
	if len(ms) != 2 || string(ms[0].Payload) != `{"id":"e.7-0"}` || ms[0].ID != "e.7-0" || string(ms[1].Payload) != `{"id":"e.8-0","data":8}` {
		t.Fatalf("position replay: %v", ms)
	}
	// An empty history's position is "0", a valid id.
	s2, _ := resuming("", 1<<20)
	s2.Hold()
	s2.Replay(false, "0", nil)
	if got := queued(s2); got != `{"id":"0"}` || s2.LastID() != "0" {
		t.Fatalf("position 0: %s last %s", got, s2.LastID())
	}
}

// Messages held while the history is read count against the queue's
// limit: a client that cannot be caught up is closed with 4008, and
// nothing it held is queued.
func TestResumeOverflowWhileHoldingCloses4008(t *testing.T) {
	s, tr := resuming("e.0-0", 60)
	s.Hold()
	n := 1
	for ; n < 100 && s.Deliver(rec(t, "e", n)); n++ {
	}
	if n == 100 || !s.IsClosed() || s.CloseCode() != CloseTooSlow || tr.closes != 1 {
		t.Fatalf("after %d held: closed=%v code=%d closes=%d", n, s.IsClosed(), s.CloseCode(), tr.closes)
	}
	s.Replay(false, "", []*Message{rec(t, "e", 1)})
	if len(s.Drain(nil)) != 0 {
		t.Fatal("a closed session queued its replay")
	}
}

// A resync asked for while the session is being caught up marks it: that
// Replay queues its history only, keeps what it held (maybe newer than
// what the resync will find missing) and reports that the history must be
// read again.
func TestResumeHoldForResyncWhileHeld(t *testing.T) {
	s, _ := resuming("e.1-0", 1<<20)
	s.Hold() // the admission
	if s.HoldForResync() {
		t.Fatal("HoldForResync took a held session")
	}
	s.Deliver(rec(t, "e", 5)) // live after the subscription came back
	if again := s.Replay(false, "", []*Message{rec(t, "e", 2)}); !again {
		t.Fatal("Replay did not ask for another read")
	}
	if got := queued(s); got != `{"id":"e.2-0","data":2}` {
		t.Fatalf("first replay: %s", got)
	}
	s.Deliver(rec(t, "e", 6)) // still held
	if len(s.Drain(nil)) != 0 || s.LastID() != "e.2-0" {
		t.Fatal("the session was let go before the second read")
	}
	if again := s.Replay(false, "", []*Message{rec(t, "e", 3), rec(t, "e", 4), rec(t, "e", 5)}); again {
		t.Fatal("a second read asked for without a resync")
	}
	want := `{"id":"e.3-0","data":3} {"id":"e.4-0","data":4} {"id":"e.5-0","data":5} {"id":"e.6-0","data":6}`
	if got := queued(s); got != want {
		t.Fatalf("second replay\n got %s\nwant %s", got, want)
	}
	if !s.HoldForResync() {
		t.Fatal("HoldForResync refused a session nobody holds")
	}
}
