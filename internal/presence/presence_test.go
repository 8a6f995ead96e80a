package presence

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"
)

// clock is a time source the test moves by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestMemoryCountsAcrossTransports(t *testing.T) {
	m := NewMemory(Config{NodeID: "n1", Addr: func() string { return "10.0.0.1:8088" }, Version: "v1"})
	ctx := context.Background()
	m.Join("k", "websocket")
	m.Join("k", "websocket")
	m.Join("k", "eventsource")
	m.Join("j", "polling")
	m.Leave("j", "polling")
	m.Leave("j", "polling") // unbalanced: ignored
	m.Leave("x", "websocket")
	got, _ := m.Lookup(ctx, []string{"k", "j", "x"})
	want := map[string][]Entry{"k": {{Node: "n1", Conns: 3, Transports: []string{"eventsource", "websocket"}}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Lookup = %+v, want %+v", got, want)
	}
	m.Leave("k", "eventsource")
	got, _ = m.Lookup(ctx, []string{"k"})
	if e := got["k"]; len(e) != 1 || e[0].Conns != 2 || !reflect.DeepEqual(e[0].Transports, []string{"websocket"}) {
		t.Fatalf("after a leave: %+v", got)
	}
	nodes, _ := m.Nodes(ctx)
	if len(nodes) != 1 || nodes[0].ID != "n1" || nodes[0].Conns != 2 || nodes[0].Addr != "10.0.0.1:8088" || nodes[0].Version != "v1" {
		t.Fatalf("Nodes = %+v", nodes)
	}
	m.Leave("k", "websocket")
	m.Leave("k", "websocket")
	if got, _ = m.Lookup(ctx, []string{"k"}); len(got) != 0 {
		t.Fatalf("after every leave: %+v", got)
	}
	if len(m.c.keys) != 0 {
		t.Fatalf("memory kept %d keys with no connection", len(m.c.keys))
	}
}

// TestCountsCoalesce: a key that comes and goes between two writes costs
// nothing; one written and then emptied is removed once.
func TestCountsCoalesce(t *testing.T) {
	c := newCounts(true, nil)
	enc := func(k *keyState) string { return fmt.Sprint(k.n) }
	c.change("a", "websocket", 1)
	c.change("a", "websocket", -1)
	c.change("b", "websocket", 1)
	c.change("b", "polling", 1)
	ws := c.take(10, nil, enc)
	if want := []write{{key: "b", value: "2", add: true}}; !reflect.DeepEqual(ws, want) {
		t.Fatalf("take = %+v, want %+v", ws, want)
	}
	c.done(ws, true)
	c.change("b", "websocket", -1)
	c.change("b", "polling", -1)
	ws = c.take(10, nil, enc)
	if want := []write{{key: "b"}}; !reflect.DeepEqual(ws, want) {
		t.Fatalf("take = %+v, want %+v", ws, want)
	}
	c.done(ws, false) // a failed write is queued again
	if ws = c.take(10, nil, enc); len(ws) != 1 || ws[0].value != "" {
		t.Fatalf("retry = %+v", ws)
	}
	c.done(ws, true)
	if len(c.keys) != 0 || c.empty != 0 || c.pending() != 0 {
		t.Fatalf("left behind: keys %d, empty %d, pending %d", len(c.keys), c.empty, c.pending())
	}
}

// TestCountsBoundWhileUnwritten: emptied keys kept for a writer that cannot
// write are bounded; past the bound they are let go and a resync is asked.
func TestCountsBoundWhileUnwritten(t *testing.T) {
	c := newCounts(true, nil)
	c.maxEmpty = 10
	enc := func(k *keyState) string { return "x" }
	for i := range 100 {
		c.change(fmt.Sprint("k", i), "websocket", 1)
	}
	c.done(c.take(1000, nil, enc), true) // written
	for i := range 100 {
		c.change(fmt.Sprint("k", i), "websocket", -1) // to be removed, but the store is down
	}
	c.change("live", "websocket", 1)
	if len(c.keys) > 12 || !c.needsResync() {
		t.Fatalf("keys %d, resync %v: want at most the bound, and a resync", len(c.keys), c.needsResync())
	}
	if !c.resync() || c.needsResync() {
		t.Fatal("resync did not clear the request")
	}
	ws := c.take(1000, nil, enc)
	if len(ws) != 1 || ws[0].key != "live" || !ws[0].add {
		t.Fatalf("after resync: %+v", ws)
	}
}
