package hub

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// countingStore counts lookups; it knows one key.
type countingStore struct {
	keystore.KeyStore
	lookups atomic.Int64
	panicOn string
}

func (c *countingStore) Contains(ctx context.Context, key string) (bool, error) {
	c.lookups.Add(1)
	if key == c.panicOn {
		panic("store bug for " + key)
	}
	return c.KeyStore.Contains(ctx, key)
}

func try(h *Hub, key, addr string) (*session.Session, error) {
	s := session.New(h.NewID(), session.Peer{Key: key, Addr: addr}, "test", &fakeTransport{}, 1<<20)
	return s, h.Admit(context.Background(), s)
}

func code(err error) int { c, _ := Verdict(err); return c }

func TestFailedKeyChecksThrottledPerAddressWithoutLookups(t *testing.T) {
	store := &countingStore{KeyStore: keystore.NewMemory("good")}
	h := newHub(t, store, nil, func(c *Config) { c.AuthFailRate = 0.001; c.AuthFailBurst = 5 })
	for i := range 2000 {
		_, err := try(h, "wrong", "198.51.100.1")
		want := session.CloseUnauthorized
		if i >= 5 {
			want = session.CloseTooMany
		}
		if code(err) != want {
			t.Fatalf("attempt %d: %v, want %d", i, err, want)
		}
	}
	if n := store.lookups.Load(); n != 5 {
		t.Fatalf("store asked %d times, want 5 (the burst)", n)
	}
	if got := testutil.ToFloat64(h.m.Rejections.WithLabelValues(metrics.RejectThrottled)); got != 1995 {
		t.Fatalf("throttled = %v", got)
	}
	// Another address is not affected, and a good key from the throttled one
	// is refused too (the throttle is by address, before any lookup).
	if _, err := try(h, "good", "198.51.100.2"); err != nil {
		t.Fatalf("other address: %v", err)
	}
	if _, err := try(h, "good", "198.51.100.1"); code(err) != session.CloseTooMany {
		t.Fatalf("throttled address admitted: %v", err)
	}
}

func TestSessionCapsPerKeyAndAddress(t *testing.T) {
	h := newHub(t, keystore.NewMemory("a", "b"), nil, func(c *Config) { c.MaxSessionsPerKey = 3; c.MaxSessionsPerAddr = 4 })
	var held []*session.Session
	for i := range 3 {
		s, err := try(h, "a", "addr-"+string(rune('0'+i)))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, s)
	}
	if _, err := try(h, "a", "addr-9"); code(err) != session.CloseTooMany || !strings.Contains(err.Error(), "key") {
		t.Fatalf("4th session of a key: %v", err)
	}
	h.Leave(held[0], metrics.DiscClient)
	if _, err := try(h, "a", "addr-9"); err != nil {
		t.Fatalf("a freed slot was not reusable: %v", err)
	}
	for range 4 {
		if _, err := try(h, "b", "same"); err != nil && !strings.Contains(err.Error(), "key") {
			t.Fatal(err)
		}
	}
	h2 := newHub(t, keystore.NewMemory("a", "b", "c", "d", "e"), nil, func(c *Config) { c.MaxSessionsPerAddr = 4 })
	for _, k := range []string{"a", "b", "c", "d"} {
		if _, err := try(h2, k, "same"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := try(h2, "e", "same"); code(err) != session.CloseTooMany || !strings.Contains(err.Error(), "address") {
		t.Fatalf("5th session of an address: %v", err)
	}
	if _, err := try(h2, "e", "other"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(h2.m.Rejections.WithLabelValues(metrics.RejectSessionLimit)); got != 1 {
		t.Fatalf("session_limit rejections = %v", got)
	}
}

func TestClientTextRateIsPerKey(t *testing.T) {
	h := newHub(t, keystore.NewMemory("k"), nil, func(c *Config) { c.ClientRate = 0.001; c.ClientBurst = 10 })
	var sessions []*session.Session
	for i := range 5 {
		s, err := try(h, "k", "a"+string(rune('0'+i)))
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, s)
	}
	allowed := 0
	for i := range 100 {
		if _, err := h.ClientText(sessions[i%5], []byte("ping")); err == nil {
			allowed++
		} else if !errors.Is(err, ErrRateLimited) {
			t.Fatal(err)
		}
	}
	if allowed != 10 {
		t.Fatalf("%d messages allowed over 5 sessions of one key, want the burst of 10", allowed)
	}
}

func TestRecoverEndsOnlyThatConnection(t *testing.T) {
	store := &countingStore{KeyStore: keystore.NewMemory("good"), panicOn: "boom"}
	h := newHub(t, store, nil, nil)
	good, _ := admit(t, h, "good", 1<<20)
	s := session.New(h.NewID(), session.Peer{Key: "boom", Addr: "x"}, "test", &fakeTransport{}, 1<<20)
	cleaned := false
	func() {
		defer h.Recover(s, func() { cleaned = true })
		_ = h.Admit(context.Background(), s)
	}()
	if !cleaned || s.CloseCode() != session.CloseInternal {
		t.Fatalf("cleanup %v, close code %d", cleaned, s.CloseCode())
	}
	// A registered session that panics later is unregistered with its reason.
	func() {
		defer h.Recover(good, nil)
		panic("transport bug")
	}()
	if h.Live() != 0 || good.CloseCode() != session.CloseInternal {
		t.Fatalf("live %d, code %d", h.Live(), good.CloseCode())
	}
	if got := testutil.ToFloat64(h.m.Disconnects.WithLabelValues(metrics.DiscInternal)); got != 1 {
		t.Fatalf("internal_error disconnects = %v", got)
	}
}

func TestDispatchDeliversOncePerSessionAndSurvivesBadMessages(t *testing.T) {
	h := newHub(t, keystore.NewMemory("K", "L"), nil, nil)
	k, _ := admit(t, h, "K", 1<<20)
	l, _ := admit(t, h, "L", 1<<20)
	h.Dispatch([]byte(`{"recipients":["K","L","K","\u004b","K"],"data":1}`))
	if got := payloads(k); len(got) != 1 {
		t.Fatalf("K got %v", got)
	}
	if got := payloads(l); len(got) != 1 {
		t.Fatalf("L got %v", got)
	}
	h.Dispatch([]byte("{\"recipients\":[\"K\"],\"data\":\"\xff\"}"))
	if got := payloads(k); len(got) != 0 || k.IsClosed() {
		t.Fatalf("invalid UTF-8 delivered: %v", got)
	}
	if got := testutil.ToFloat64(h.m.Drops.WithLabelValues("invalid_utf8")); got != 1 {
		t.Fatalf("invalid_utf8 drops = %v", got)
	}
}

// slowStore answers after a delay, like a loaded MongoDB.
type slowStore struct{ countingStore }

func (s *slowStore) Contains(ctx context.Context, key string) (bool, error) {
	time.Sleep(20 * time.Millisecond)
	return s.countingStore.Contains(ctx, key)
}

func TestConcurrentWrongKeysCannotOutrunTheThrottle(t *testing.T) {
	store := &slowStore{countingStore{KeyStore: keystore.NewMemory("good")}}
	// A minute per key check: the 200 good keys below queue for the 20
	// lookup slots, and however slow the machine none may time out.
	h := newHub(t, store, nil, func(c *Config) {
		c.AuthFailRate = 0.001
		c.AuthFailBurst = 20
		c.KeyCheckTimeout = time.Minute
	})
	var wg sync.WaitGroup
	for range 500 {
		wg.Go(func() { _, _ = try(h, "wrong", "198.51.100.9") })
	}
	wg.Wait()
	// 20 lookups run at once; each asks for budget when its turn comes, so
	// at most the burst in flight plus the burst spent: 2 × 20.
	if n := store.lookups.Load(); n >= 40 {
		t.Fatalf("500 concurrent wrong keys from one address asked the store %d times; the burst is 20", n)
	}
	// Known keys never use up the budget, however many arrive at once.
	var bad atomic.Int32
	for range 200 {
		wg.Go(func() {
			if _, err := try(h, "good", "198.51.100.10"); err != nil {
				bad.Add(1)
			}
		})
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Fatalf("%d of 200 concurrent good keys from one address refused", bad.Load())
	}
	for range 50 {
		if _, err := try(h, "good", "198.51.100.10"); err != nil {
			t.Fatal(err)
		}
	}
}
