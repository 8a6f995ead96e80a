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
