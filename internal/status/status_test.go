package status

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func TestSamplerRatesFromCounters(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	var c Counters
	s := New(Config{Read: func() Counters { return c }, Size: 4, Now: clock.now})

	steps := []struct {
		dt          time.Duration
		in, out     float64
		drop, disc  float64
		ws, polling int
	}{
		{0, 0, 0, 0, 0, 0, 0},
		{time.Second, 10, 30, 1, 0, 3, 0},
		{time.Second, 30, 90, 1, 2, 3, 1},
		{2 * time.Second, 50, 130, 5, 2, 2, 1}, // a late tick: rates over 2 s
		{time.Second, 50, 130, 5, 2, 2, 1},     // the first sample falls out of the ring
	}
	for _, st := range steps {
		clock.add(st.dt)
		c = Counters{
			Connections: map[string]int{"websocket": st.ws, "polling": st.polling},
			MessagesIn:  st.in, Deliveries: st.out,
			Drops:       map[string]float64{"invalid_json": st.drop},
			Disconnects: map[string]float64{"client": st.disc},
		}
		s.Sample()
	}

	got := s.Series(time.Time{})
	if len(got.T) != 3 { // 4 samples kept, 3 rates
		t.Fatalf("%d points, want 3: %+v", len(got.T), got)
	}
	for name, pair := range map[string][2][]float64{
		"in":          {got.In, {20, 10, 0}},
		"out":         {got.Out, {60, 20, 0}},
		"drops":       {got.Drops, {0, 2, 0}},
		"disconnects": {got.Disconnects, {2, 0, 0}},
	} {
		if !slices.Equal(pair[0], pair[1]) {
			t.Errorf("%s = %v, want %v", name, pair[0], pair[1])
		}
	}
	if !slices.Equal(got.Connections["websocket"], []int{3, 2, 2}) || !slices.Equal(got.Connections["polling"], []int{1, 1, 1}) {
		t.Errorf("connections = %v", got.Connections)
	}
	if got.PeriodMS != 1000 || got.Totals.Drops["invalid_json"] != 5 {
		t.Errorf("period %d, totals %+v", got.PeriodMS, got.Totals)
	}
	// since: only what the page has not seen yet.
	newer := s.Series(time.UnixMilli(got.T[1]))
	if !slices.Equal(newer.T, got.T[2:]) || !slices.Equal(newer.Out, []float64{0}) {
		t.Errorf("since %d: %+v", got.T[1], newer)
	}
}

func TestSamplerEmptyAndNoTime(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	n := 0.0
	s := New(Config{Read: func() Counters { n += 5; return Counters{MessagesIn: n} }, Now: clock.now})
	if got := s.Series(time.Time{}); len(got.T) != 0 || got.In == nil || got.Connections == nil {
		t.Fatalf("empty series must be empty arrays, not null: %+v", got)
	}
	s.Sample()
	s.Sample() // same instant: no time passed, no rate rather than +Inf
	if got := s.Series(time.Time{}); len(got.In) != 1 || got.In[0] != 0 {
		t.Fatalf("in = %v", got.In)
	}
}

func TestSamplerRunSamplesUntilCancelled(t *testing.T) {
	var mu sync.Mutex
	reads := 0
	s := New(Config{Period: time.Millisecond, Read: func() Counters {
		mu.Lock()
		defer mu.Unlock()
		reads++
		return Counters{}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	deadline := time.Now().Add(time.Minute) // only a hang takes that long
	for {
		mu.Lock()
		r := reads
		mu.Unlock()
		if r >= 3 {
			break
		}
		_ = s.Series(time.Time{}) // readers run beside the sampler (go test -race)
		if time.Now().After(deadline) {
			t.Fatal("sampler did not sample three times within a minute")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Run did not return after cancel")
	}
}

// ?since= is a t the page was given, in milliseconds: the sample it names
// is not sent again, though the sampler keeps nanoseconds.
func TestSeriesSinceExcludesTheNamedSample(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1_700_000_000, 700_000)} // 0.7 ms past a millisecond
	s := New(Config{Read: func() Counters { return Counters{} }, Size: 8, Now: clock.now})
	for range 4 {
		s.Sample()
		clock.add(time.Second)
	}
	all := s.Series(time.Time{})
	if len(all.T) != 3 {
		t.Fatalf("%d points, want 3", len(all.T))
	}
	if got := s.Series(time.UnixMilli(all.T[len(all.T)-1])); len(got.T) != 0 {
		t.Errorf("since the last t %d: %v, want nothing", all.T[len(all.T)-1], got.T)
	}
	if got := s.Series(time.UnixMilli(all.T[0])); !slices.Equal(got.T, all.T[1:]) {
		t.Errorf("since the first t: %v, want %v", got.T, all.T[1:])
	}
}
