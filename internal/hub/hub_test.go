package hub

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/session"
)

// fakeTransport records what the hub asks of a session's transport.
type fakeTransport struct {
	mu     sync.Mutex
	wakes  int
	pings  int
	closed []int
}

func (f *fakeTransport) Wake()      { f.mu.Lock(); f.wakes++; f.mu.Unlock() }
func (f *fakeTransport) KeepAlive() { f.mu.Lock(); f.pings++; f.mu.Unlock() }
func (f *fakeTransport) Closed(code int, _ string) {
	f.mu.Lock()
	f.closed = append(f.closed, code)
	f.mu.Unlock()
}

func newHub(t testing.TB, store keystore.KeyStore, events broker.Broker, mod func(*Config)) *Hub {
	cfg := Config{Store: store, Events: events, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		ConnectedChannel: "connected", DisconnectedChannel: "disconnected", RecheckInterval: -1}
	if mod != nil {
		mod(&cfg)
	}
	h := New(cfg)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		h.Shutdown(ctx)
	})
	return h
}

func admit(t testing.TB, h *Hub, key string, limit int) (*session.Session, *fakeTransport) {
	t.Helper()
	ft := &fakeTransport{}
	s := session.New(h.NewID(), session.Peer{Key: key}, "test", ft, limit)
	if err := h.Admit(context.Background(), s); err != nil {
		t.Fatalf("admit %s: %v", key, err)
	}
	return s, ft
}

func payloads(s *session.Session) []string {
	var out []string
	for _, m := range s.Drain(nil) {
		out = append(out, string(m.Payload))
	}
	return out
}

func TestAdmitRejections(t *testing.T) {
	store := keystore.NewMemory("good")
	h := newHub(t, store, nil, nil)
	cases := []struct {
		key  string
		code int
		err  error
	}{{"bad", session.CloseUnauthorized, nil}, {"", session.CloseUnauthorized, nil}, {"good", session.CloseTryAgain, errors.New("down")}}
	for _, c := range cases {
		store.SetError(c.err)
		err := h.Admit(context.Background(), session.New(1, session.Peer{Key: c.key}, "test", &fakeTransport{}, 100))
		var rej *ErrRejected
		if !errors.As(err, &rej) || rej.Code != c.code {
			t.Errorf("key %q: err %v, want code %d", c.key, err, c.code)
		}
	}
	if h.Live() != 0 {
		t.Fatal("rejected session registered")
	}
}

func TestDispatchRoutesToEverySessionOfEachRecipient(t *testing.T) {
	h := newHub(t, keystore.NewMemory("a", "b", "c"), nil, nil)
	a1, ft := admit(t, h, "a", 1<<20)
	a2, _ := admit(t, h, "a", 1<<20)
	b, _ := admit(t, h, "b", 1<<20)
	c, _ := admit(t, h, "c", 1<<20)
	h.Dispatch([]byte(`{"recipients":["a","b","nobody"],"data":{"x":1}}`))
	for _, s := range []*session.Session{a1, a2, b} {
		if got := payloads(s); len(got) != 1 || got[0] != `{"data":{"x":1}}` {
			t.Fatalf("session %d got %v", s.ID, got)
		}
	}
	if got := payloads(c); len(got) != 0 {
		t.Fatalf("non-recipient got %v", got)
	}
	if ft.wakes != 1 {
		t.Fatalf("wakes = %d, want 1", ft.wakes)
	}
	if got := testutil.ToFloat64(h.m.Deliveries); got != 3 {
		t.Fatalf("deliveries = %v", got)
	}
	// Leaving one session of a key keeps the other.
	h.Leave(a1, "client")
	h.Dispatch([]byte(`{"recipients":["a"],"data":2}`))
	if got := payloads(a2); len(got) != 1 {
		t.Fatalf("remaining session got %v", got)
	}
	if h.Live() != 3 {
		t.Fatalf("live = %d", h.Live())
	}
	h.Leave(a1, "client") // idempotent
	if h.Live() != 3 {
		t.Fatalf("double leave: live = %d", h.Live())
	}
}

func TestDispatchEncodesOnceForAllRecipients(t *testing.T) {
	h := newHub(t, keystore.NewMemory("a", "b"), nil, nil)
	a, _ := admit(t, h, "a", 1<<20)
	b, _ := admit(t, h, "b", 1<<20)
	h.Dispatch([]byte(`{"recipients":["a","b"],"data":1}`))
	ma, mb := a.Drain(nil), b.Drain(nil)
	if ma[0] != mb[0] {
		t.Fatal("recipients got different message objects")
	}
}

func TestOverflowClosesOnlyTheSlowSession(t *testing.T) {
	h := newHub(t, keystore.NewMemory("slow", "ok"), nil, nil)
	slow, sft := admit(t, h, "slow", 100)
	ok, _ := admit(t, h, "ok", 1<<20)
	for range 5 {
		h.Dispatch([]byte(`{"recipients":["slow","ok"],"data":"0123456789012345678901234567890123456789"}`))
	}
	if len(sft.closed) != 1 || sft.closed[0] != session.CloseTooSlow {
		t.Fatalf("slow session closes: %v", sft.closed)
	}
	if !slow.IsClosed() || len(payloads(ok)) != 5 {
		t.Fatal("fast session lost messages")
	}
}

func TestMalformedCountedByReason(t *testing.T) {
	h := newHub(t, keystore.NewMemory(), nil, nil)
	for _, m := range []string{`nope`, `[1]`, `{"recipients":"x","data":1}`, `{"recipients":["x"]}`} {
		h.Dispatch([]byte(m))
	}
	for _, r := range []string{"invalid_json", "not_object", "bad_recipients", "no_data"} {
		if got := testutil.ToFloat64(h.m.Drops.WithLabelValues(r)); got != 1 {
			t.Errorf("drops{%s} = %v", r, got)
		}
	}
}

func TestEventsInOrder(t *testing.T) {
	b := broker.NewMemory("in")
	conn, stop1 := b.Subscribe("connected")
	disc, stop2 := b.Subscribe("disconnected")
	defer stop1()
	defer stop2()
	h := newHub(t, keystore.NewMemory("k"), b, nil)
	s, _ := admit(t, h, "k", 100)
	h.Leave(s, "client")
	for _, ch := range []<-chan []byte{conn, disc} {
		select {
		case p := <-ch:
			if string(p) != "k" {
				t.Fatalf("event payload %q", p)
			}
		case <-time.After(time.Minute):
			t.Fatal("no event")
		}
	}
}

func TestRecheckRevokesRemovedKeysOnly(t *testing.T) {
	store := keystore.NewMemory("a", "b")
	h := newHub(t, store, nil, nil)
	_, aft := admit(t, h, "a", 100)
	_, bft := admit(t, h, "b", 100)
	store.SetError(errors.New("down"))
	store.Remove("a")
	h.recheck(context.Background())
	if len(aft.closed) != 0 {
		t.Fatal("closed while store down")
	}
	store.SetError(nil)
	h.recheck(context.Background())
	if len(aft.closed) != 1 || aft.closed[0] != session.CloseRevoked || len(bft.closed) != 0 {
		t.Fatalf("closes a=%v b=%v", aft.closed, bft.closed)
	}
}

func TestShutdownClosesWithGoingAwayAndRefusesNew(t *testing.T) {
	h := newHub(t, keystore.NewMemory("a"), nil, nil)
	s, ft := admit(t, h, "a", 100)
	go func() { // the transport leaves once told to close
		for !s.IsClosed() {
			time.Sleep(time.Millisecond)
		}
		h.Leave(s, "shutdown")
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h.Shutdown(ctx)
	if len(ft.closed) != 1 || ft.closed[0] != session.CloseGoingAway || h.Live() != 0 {
		t.Fatalf("closes %v live %d", ft.closed, h.Live())
	}
	err := h.Admit(context.Background(), session.New(9, session.Peer{Key: "a"}, "test", &fakeTransport{}, 100))
	var rej *ErrRejected
	if !errors.As(err, &rej) || rej.Code != session.CloseGoingAway {
		t.Fatalf("admit during shutdown: %v", err)
	}
}

// BenchmarkDispatchPersonal measures routing one message to one recipient
// among many keys; allocations are per message (payload, Message), none per
// recipient.
func BenchmarkDispatchPersonal(b *testing.B) {
	store := keystore.NewMemory()
	h := newHub(b, store, nil, nil)
	keys := make([]string, 10000)
	sessions := make([]*session.Session, len(keys))
	for i := range keys {
		keys[i] = "key-" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
		store.Add(keys[i])
		sessions[i], _ = admit(b, h, keys[i], 1<<30)
	}
	msgs := make([][]byte, len(keys))
	for i, k := range keys {
		msgs[i] = []byte(`{"recipients":["` + k + `"],"data":{"seq":1}}`)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		h.Dispatch(msgs[i%len(msgs)])
		i++
		if i%len(msgs) == 0 {
			for _, s := range sessions {
				s.Drain(nil)
			}
		}
	}
}

// BenchmarkDispatchFanout sends one message to 1,000 sessions of one key:
// the per-recipient cost, with zero allocations per recipient.
func BenchmarkDispatchFanout(b *testing.B) {
	h := newHub(b, keystore.NewMemory("k"), nil, nil)
	sessions := make([]*session.Session, 1000)
	for i := range sessions {
		sessions[i], _ = admit(b, h, "k", 1<<30)
	}
	msg := []byte(`{"recipients":["k"],"data":{"seq":1}}`)
	scratch := make([]*session.Message, 0, 64)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		h.Dispatch(msg)
		if n++; n%32 == 0 {
			for _, s := range sessions {
				scratch = s.Drain(scratch)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(sessions)), "ns/delivery")
}

// Over one interval every session gets exactly one keep-alive, in slices of
// a few each: never a burst of pings to one shard's every connection.
func TestKeepAlivesAreSpreadInSmallSlices(t *testing.T) {
	keys := make([]string, 2000)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	h := newHub(t, keystore.NewMemory(keys...), nil, nil)
	fts := make([]*fakeTransport, len(keys))
	for i, k := range keys {
		_, fts[i] = admit(t, h, k, 100)
	}
	const parts = 39 // a 25 s interval: ticks of ~10 ms
	most := 0
	for tick := range shardCount * parts {
		before := 0
		for _, ft := range fts {
			before += ft.pings
		}
		h.keepAlive(tick, parts)
		after := 0
		for _, ft := range fts {
			after += ft.pings
		}
		most = max(most, after-before)
	}
	for i, ft := range fts {
		if ft.pings != 1 {
			t.Fatalf("session %d got %d keep-alives in one interval; want 1", i, ft.pings)
		}
	}
	// 2,000 sessions over 64 × 39 ticks: under one per tick on average.
	if most > 8 {
		t.Fatalf("one tick pinged %d sessions at once", most)
	}
}
