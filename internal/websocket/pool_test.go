package websocket

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/keystore"
)

// A message to a connection that has not been written for a gap goes out at
// once; what reaches it within the gap waits and goes out in one write when
// the gap has passed. The pool's clock is the test's, so nothing here
// depends on how fast the machine is.
func TestHotConnectionIsFlushedOncePerGap(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("good"), hub.Config{}, Config{CoalesceGap: time.Minute})
	var now atomic.Int64
	now.Store(int64(time.Hour))
	h.srv.pool.clock = now.Load
	p := h.connect("good", "192.0.2.1")
	h.waitLive(1)

	h.hub.Dispatch([]byte(`{"recipients":["good"],"data":"lone"}`))
	p.expectText(`{"data":"lone"}`)
	waitFor(t, 5*time.Second, "the lone frame counted", func() bool { _, f := h.writeCounts(); return f == 1 })

	// Written just now: the next ten wait for the gap, however long the
	// machine takes to queue them.
	for i := range 10 {
		h.hub.Dispatch(fmt.Appendf(nil, `{"recipients":["good"],"data":%d}`, i))
	}
	if w, f := h.writeCounts(); w != 1 || f != 1 {
		t.Fatalf("within the gap: %v writes, %v frames; want 1 and 1", w, f)
	}
	now.Add(int64(time.Minute))
	select { // the pool's timer runs on real time: nudge it
	case h.srv.pool.wake <- struct{}{}:
	default:
	}
	for i := range 10 {
		p.expectText(fmt.Sprintf(`{"data":%d}`, i))
	}
	waitFor(t, 5*time.Second, "11 frames counted", func() bool { _, f := h.writeCounts(); return f == 11 })
	if w, _ := h.writeCounts(); w != 2 {
		t.Fatalf("after the gap: %v writes for 11 frames; want 2 (the ten in one)", w)
	}
}

// With no gap every wake-up writes at once.
func TestNoGapWritesAtOnce(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("good"), hub.Config{}, Config{})
	var now atomic.Int64
	now.Store(int64(time.Hour)) // frozen: with a gap nothing after the first write would go out
	h.srv.pool.clock = now.Load
	p := h.connect("good", "192.0.2.1")
	h.waitLive(1)
	for i := range 5 {
		h.hub.Dispatch(fmt.Appendf(nil, `{"recipients":["good"],"data":%d}`, i))
		p.expectText(fmt.Sprintf(`{"data":%d}`, i))
	}
}

// A writer pauses only while the backlog is long and growing: input that
// outpaces the writes, not a long backlog being worked off (a broadcast).
func TestWriterPausesOnlyWhileTheBacklogGrows(t *testing.T) {
	p := newWriterPool(1, 0, func() {})
	add := func(n int) {
		p.mu.Lock()
		for range n {
			p.dirty = append(p.dirty, &conn{})
		}
		p.mu.Unlock()
	}
	take := func() bool {
		_, _, pause := p.take(nil, 32)
		return pause
	}
	add(burstBacklog + 100) // a broadcast's backlog, all at once
	if !take() {
		t.Fatal("no pause when the backlog first appeared")
	}
	for range 5 {
		if take() {
			t.Fatal("paused while working off a backlog that only shrinks")
		}
	}
	add(10) // a trickle: less than half a batch per batch
	if take() {
		t.Fatal("paused for a trickle")
	}
	add(300) // a burst: more arrives than a batch takes
	if !take() {
		t.Fatal("no pause while the backlog grew by more than a batch")
	}
	for len(p.dirty) > 0 {
		take()
	}
	add(burstBacklog) // short backlog: never a pause
	if take() {
		t.Fatal("paused with a short backlog")
	}
}

// Below a burst a writer takes half a batch and wakes a helper for the
// rest; past burstBacklog nothing is split and a helper takes nothing, so
// a burst is still written by the writer that coalesces. Only the default
// number of writers has helpers: --writers N means exactly N.
func TestSmallBatchesAreSplitWithAHelper(t *testing.T) {
	p := newWriterPool(1, 0, func() {})
	p.helpers = 1 // as the default gives on 2 CPUs, whatever this machine has
	add := func(n int) {
		p.mu.Lock()
		for range n {
			p.dirty = append(p.dirty, &conn{})
		}
		p.mu.Unlock()
	}
	helped := func() bool {
		select {
		case <-p.help:
			return true
		default:
			return false
		}
	}

	add(20) // a millisecond of 20,000 messages/s to random connections
	batch, _, _ := p.take(nil, 32)
	if woken := helped(); len(batch) != 10 || !woken {
		t.Fatalf("a batch of 20: the writer took %d (want 10), helper woken %v", len(batch), woken)
	}
	if got := p.takeHelp(nil, 32); len(got) != 5 {
		t.Fatalf("the helper took %d of the 10 left, want half: 5", len(got))
	}
	batch, _, _ = p.take(batch, 32)
	if len(batch) != 3 || len(p.dirty) != 2 {
		t.Fatalf("the writer took %d, %d left; want 3 and 2", len(batch), len(p.dirty))
	}
	for len(p.dirty) > 0 {
		p.take(batch, 32)
	}
	_ = helped()
	add(1) // a lone message: written at once by the writer, nobody woken
	if batch, _, _ = p.take(batch, 32); len(batch) != 1 || helped() {
		t.Fatalf("a lone message: took %d, helper woken", len(batch))
	}

	add(burstBacklog + 1) // a burst: the writer takes a whole batch, the helper nothing
	if batch, _, _ = p.take(batch, 32); len(batch) != 32 || helped() {
		t.Fatalf("a burst: the writer took %d (want 32), helper woken", len(batch))
	}
	add(32)
	if got := p.takeHelp(nil, 32); len(got) != 0 {
		t.Fatalf("a helper took %d from a burst's backlog", len(got))
	}

	if q := newWriterPool(2, 0, func() {}); q.helpers != 0 {
		t.Fatalf("--writers 2 has %d helpers, want none", q.helpers)
	}
}

// With helpers every connection of a stream of small batches is written,
// each message once, in order per connection.
func TestHelpersLoseNothing(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("a", "b", "c", "d"), hub.Config{}, Config{})
	h.srv.pool.helpers = max(h.srv.pool.helpers, 1)
	keys := []string{"a", "b", "c", "d"}
	clients := make([]*peer, len(keys))
	for i, k := range keys {
		clients[i] = h.connect(k, fmt.Sprintf("192.0.2.%d", i+1))
	}
	h.waitLive(len(keys))
	const n = 200
	for i := range n {
		h.hub.Dispatch(fmt.Appendf(nil, `{"recipients":["a","b","c","d"],"data":%d}`, i))
	}
	for _, c := range clients {
		for i := range n {
			c.expectText(fmt.Sprintf(`{"data":%d}`, i))
		}
	}
}
