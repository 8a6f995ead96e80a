package hub

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/session"
)

// A token whose exp is past 2262 (exp 9999999999, a common "never
// expires" value) was stored as Unix nanoseconds, which overflow: the
// session's expiry wrapped into the past, so it was admitted and then
// closed at once with 4403 "token expired" — and wspubsub.js, told its
// token expired, reconnected with the same token, in a loop.
func TestFarFutureExpiryIsNotPast(t *testing.T) {
	h, _ := tokenHub(t)
	for _, sec := range []int64{9999999999, 1 << 40, 253402300799 /* 9999-12-31 */} {
		s, _ := admitToken(t, h, token("far"+strconv.FormatInt(sec, 10), time.Unix(sec, 0)), "")
		if !s.Expires().After(time.Now().Add(100 * 365 * 24 * time.Hour)) {
			t.Fatalf("exp %d: session expires %v, want far in the future", sec, s.Expires())
		}
		h.expire(time.Now())
		if s.IsClosed() {
			t.Fatalf("exp %d: closed at once (code %d)", sec, s.CloseCode())
		}
	}
}

// Sending the same (valid) token again and again in refresh frames added
// an expiry entry each time, all current (same time), so compaction kept
// them all: the heap grew with every frame for as long as the token lived.
func TestRepeatedRefreshDoesNotGrowTheExpiryHeap(t *testing.T) {
	h, _ := tokenHub(t)
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	s, _ := admitToken(t, h, token("alice", exp), "")
	frame := []byte(`{"token":"` + token("alice", exp) + `"}`)
	for range 3000 {
		if h.refresh(s, frame); s.IsClosed() {
			t.Fatal("closed by a valid refresh")
		}
	}
	h.expiry.mu.Lock()
	n := len(h.expiry.q)
	h.expiry.mu.Unlock()
	if n > 10 {
		t.Fatalf("expiry heap holds %d entries for one session refreshed 3000 times with one token", n)
	}
}

// failingHistory cannot be read: resuming clients are refused (1013).
type failingHistory struct{}

func (failingHistory) Record(context.Context, []byte, string) (broker.Recorded, error) {
	return broker.Recorded{}, errors.New("down")
}
func (failingHistory) Since(context.Context, string, string) (broker.Replay, error) {
	return broker.Replay{}, errors.New("down")
}

// A resuming client whose history cannot be read (Redis down) is refused
// after its token's expiry was queued; its entry was never counted stale,
// so nothing ever compacted the heap: every retry of every client during
// an outage (wspubsub.js retries with since=) kept its session in memory
// until its token's exp.
func TestRefusedResumesDoNotPileUpInTheExpiryHeap(t *testing.T) {
	ft := &fakeTokens{}
	h := newHub(t, nil, nil, func(c *Config) { c.Auth = ft; c.History = failingHistory{}; c.MaxSessionsPerAddr = 0 })
	exp := time.Now().Add(time.Hour)
	for i := range 5000 {
		s := session.New(h.NewID(), session.Peer{Key: token("k"+strconv.Itoa(i), exp), Addr: "192.0.2.9", Resume: true, Since: "0"}, "test", &fakeTransport{}, 1<<16)
		err := h.Admit(context.Background(), s)
		if code, _ := Verdict(err); code != session.CloseTryAgain {
			t.Fatalf("resume with the history down: %v, want 1013", err)
		}
		s.Close(Verdict(err)) // as every transport does with a refused session
	}
	h.expiry.mu.Lock()
	n := len(h.expiry.q)
	h.expiry.mu.Unlock()
	if n > 2100 {
		t.Fatalf("expiry heap holds %d entries after 5000 refused admissions", n)
	}
}
