package hub

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// drainFixture is a hub holding n sessions, one per key.
type drainFixture struct {
	h     *Hub
	store *countingStore
	ss    []*session.Session
	fts   []*fakeTransport
}

func newDrainFixture(t *testing.T, n int) *drainFixture {
	t.Helper()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	f := &drainFixture{store: &countingStore{KeyStore: keystore.NewMemory(keys...)}}
	f.h = newHub(t, f.store, nil, nil)
	for _, k := range keys {
		s, ft := admit(t, f.h, k, 1<<20)
		f.ss, f.fts = append(f.ss, s), append(f.fts, ft)
	}
	return f
}

// closed counts the sessions closed so far.
func (f *drainFixture) closed() int {
	n := 0
	for _, s := range f.ss {
		if s.IsClosed() {
			n++
		}
	}
	return n
}

// leaveAll lets every closed session go, as its transport would.
func (f *drainFixture) leaveAll() {
	for _, s := range f.ss {
		if s.IsClosed() {
			f.h.Leave(s, metrics.DiscClient)
		}
	}
}

// TestDrainClosesInBoundedBatchesWithServiceRestart: 100 sessions over a
// period of 10 steps go in 10 batches of at most 10, each closed with 1012;
// meanwhile a new session is refused with 1012 without a key lookup. The
// pacer stands for the ticker: Drain calls it between batches, so the
// count of closed sessions at each call is the batch just done.
func TestDrainClosesInBoundedBatchesWithServiceRestart(t *testing.T) {
	const n, period = 100, time.Second
	steps := DrainSteps(period)
	if steps != 10 {
		t.Fatalf("DrainSteps(%v) = %d, want 10", period, steps)
	}
	f := newDrainFixture(t, n)
	var after []int // sessions closed when each batch was done
	var firstBatch []*session.Session
	lookups := f.store.lookups.Load()
	pace := func(ctx context.Context) error {
		after = append(after, f.closed())
		if len(after) == 1 {
			for _, s := range f.ss {
				if s.IsClosed() {
					firstBatch = append(firstBatch, s)
				}
			}
			// Admission is refused while draining, before the key check.
			_, err := try(f.h, "k0", "192.0.2.1")
			var rej *ErrRejected
			if !errors.As(err, &rej) || rej.Code != session.CloseServiceRestart {
				t.Errorf("admit during the drain: %v, want code 1012", err)
			}
			if !f.h.Draining() {
				t.Error("Draining() is false during the drain")
			}
		}
		return nil
	}
	r := f.h.Drain(context.Background(), period, pace)
	after = append(after, f.closed())

	if r.Closed != n || r.Cut || f.closed() != n {
		t.Fatalf("drain %+v: %d of %d sessions closed", r, f.closed(), n)
	}
	if r.Batches < 2 || r.Batches != steps || len(after) != r.Batches {
		t.Fatalf("%d batches (pacer called %d times), want %d", r.Batches, len(after)-1, steps)
	}
	prev := 0
	for i, c := range after {
		if b := c - prev; b < 1 || b > (n+steps-1)/steps {
			t.Errorf("batch %d closed %d sessions, want 1..%d (closed after each batch: %v)", i, b, (n+steps-1)/steps, after)
		}
		prev = c
	}
	if r.Largest > (n+steps-1)/steps {
		t.Errorf("largest batch %d", r.Largest)
	}
	for i, ft := range f.fts {
		if len(ft.closed) != 1 || ft.closed[0] != session.CloseServiceRestart {
			t.Fatalf("session %d closed with %v, want [1012]", i, ft.closed)
		}
	}
	// The order is random, not shard by shard: the first batch spans
	// several shards (all ten from one of 64 shards: about 1 in 10^16).
	shards := map[*shard]bool{}
	for _, s := range firstBatch {
		shards[f.h.shardOf([]byte(s.Key))] = true
	}
	if len(shards) < 2 {
		t.Errorf("first batch of %d sessions all from one shard", len(firstBatch))
	}
	if got := f.store.lookups.Load() - lookups; got != 0 {
		t.Errorf("%d key lookups during the drain, want 0", got)
	}
	if got := testutil.ToFloat64(f.h.m.Rejections.WithLabelValues(metrics.RejectDraining)); got != 1 {
		t.Errorf("rejections{draining} = %v, want 1", got)
	}
	f.leaveAll()
	if got := testutil.ToFloat64(f.h.m.Disconnects.WithLabelValues(metrics.DiscDrain)); got != n {
		t.Errorf("disconnects{drain} = %v, want %d", got, n)
	}
	if f.h.Live() != 0 {
		t.Errorf("live = %d after every session left", f.h.Live())
	}
}

// TestDrainFewSessionsEndsEarly: fewer sessions than steps go one per
// batch, and the drain does not wait out the rest of the period.
func TestDrainFewSessionsEndsEarly(t *testing.T) {
	f := newDrainFixture(t, 3)
	paced := 0
	r := f.h.Drain(context.Background(), 10*time.Second, func(context.Context) error { paced++; return nil })
	if r.Closed != 3 || r.Batches != 3 || r.Largest != 1 || paced != 2 {
		t.Fatalf("drain %+v, paced %d times; want 3 batches of 1, paced twice", r, paced)
	}
}

// TestDrainClosesSessionsAdmittedAsItBegan: a session whose admission was
// past the drain check when the drain began registers afterwards; the
// drain finds it once the others are closed.
func TestDrainClosesSessionsAdmittedAsItBegan(t *testing.T) {
	f := newDrainFixture(t, 4)
	late := session.New(f.h.NewID(), session.Peer{Key: "k0"}, "test", &fakeTransport{}, 1<<20)
	registered := false
	pace := func(context.Context) error {
		if !registered { // after the first batch: the snapshot is taken
			registered = true
			if err := f.h.register(late); err != nil { // what Admit does after its checks
				t.Error(err)
			}
			f.h.live.Add(1)
		}
		return nil
	}
	r := f.h.Drain(context.Background(), time.Second, pace)
	if r.Closed != 5 || !late.IsClosed() || late.CloseCode() != session.CloseServiceRestart {
		t.Fatalf("drain %+v; late session closed %v with %d", r, late.IsClosed(), late.CloseCode())
	}
}

// TestDrainCutShortLeavesTheRestToShutdown: when the drain's context ends
// (a second signal), Drain returns at once and Shutdown closes what is
// left with 1001.
func TestDrainCutShortLeavesTheRestToShutdown(t *testing.T) {
	const n = 20
	f := newDrainFixture(t, n)
	ctx, cancel := context.WithCancel(context.Background())
	paced := 0
	pace := func(ctx context.Context) error {
		if paced++; paced == 2 {
			cancel()
		}
		return ctx.Err()
	}
	r := f.h.Drain(ctx, time.Second, pace) // 10 steps: batches of 2
	if !r.Cut || r.Batches != 2 || r.Closed != 4 {
		t.Fatalf("drain %+v, want cut after 2 batches of 2", r)
	}
	f.leaveAll()
	go func() { // the transports leave once told to close
		for _, s := range f.ss {
			for !s.IsClosed() {
				time.Sleep(time.Millisecond)
			}
			f.h.Leave(s, metrics.DiscClient)
		}
	}()
	sctx, scancel := context.WithTimeout(context.Background(), time.Minute) // over once all have left
	defer scancel()
	f.h.Shutdown(sctx)
	codes := map[int]int{}
	for _, ft := range f.fts {
		ft.mu.Lock()
		if len(ft.closed) != 1 {
			t.Errorf("closes %v, want one", ft.closed)
		} else {
			codes[ft.closed[0]]++
		}
		ft.mu.Unlock()
	}
	if codes[session.CloseServiceRestart] != 4 || codes[session.CloseGoingAway] != n-4 {
		t.Fatalf("close codes %v, want 4×1012 and %d×1001", codes, n-4)
	}
	if f.h.Live() != 0 {
		t.Fatalf("live = %d after shutdown", f.h.Live())
	}
}

func TestDrainSteps(t *testing.T) {
	for d, want := range map[time.Duration]int{0: 1, 50 * time.Millisecond: 1, time.Second: 10,
		5 * time.Second: 50, time.Minute: 600, time.Hour: 1000} {
		if got := DrainSteps(d); got != want {
			t.Errorf("DrainSteps(%v) = %d, want %d", d, got, want)
		}
	}
}
