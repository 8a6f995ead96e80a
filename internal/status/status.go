// Package status keeps the last few minutes of one gateway's activity for
// the live status page (/status): once a second it reads the cumulative
// counters the gateway already keeps (connections by transport, messages
// in, deliveries, drops, disconnects, rejections) into a ring buffer, and
// turns consecutive samples into per-second rates on request.
//
// It only reads what others count: it must not add work on the message
// path, serve HTTP, or know where the counters live (the gateway hands it a
// Read function).
package status

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"
)

// Counters is one reading of the gateway's counters. Connections is a
// gauge; every other field is cumulative since the gateway started.
type Counters struct {
	Connections map[string]int     // live connections by transport
	MessagesIn  float64            // messages received from the broker
	Deliveries  float64            // messages queued to a connection
	Drops       map[string]float64 // inbound messages dropped, by reason
	Disconnects map[string]float64 // connections ended, by reason
	Rejections  map[string]float64 // connection attempts refused, by reason
}

// sample is one Counters reading with its time, the totals of its
// by-reason maps precomputed (the series need only those).
type sample struct {
	at          time.Time
	conns       map[string]int
	in, out     float64
	drops, disc float64
	rejections  float64
}

// Sampler reads Counters every Period into a ring of Size samples. It is
// safe for concurrent use: one goroutine runs Run, any number read.
type Sampler struct {
	read   func() Counters
	period time.Duration
	now    func() time.Time

	mu     sync.Mutex
	ring   []sample // ring[(next-n+i) mod len] for i < n, oldest first
	next   int
	n      int
	latest Counters // the last reading, for the by-reason totals
}

// Config configures a Sampler; zero values take the defaults in brackets.
type Config struct {
	Read   func() Counters  // required
	Period time.Duration    // [1s]
	Size   int              // samples kept [300: five minutes at 1 s]
	Now    func() time.Time // [time.Now]; tests move it
}

// New returns a sampler; call Run to start sampling (or Sample by hand).
func New(cfg Config) *Sampler {
	if cfg.Period <= 0 {
		cfg.Period = time.Second
	}
	if cfg.Size < 2 { // a rate needs two samples
		cfg.Size = 300
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Sampler{read: cfg.Read, period: cfg.Period, now: cfg.Now, ring: make([]sample, cfg.Size)}
}

// Period is the time between two samples.
func (s *Sampler) Period() time.Duration { return s.period }

// Run samples at once, then every Period until ctx ends.
func (s *Sampler) Run(ctx context.Context) {
	s.Sample()
	t := time.NewTicker(s.period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Sample()
		}
	}
}

// Sample reads the counters once and appends the reading to the ring,
// overwriting the oldest when it is full.
func (s *Sampler) Sample() {
	c := s.read() // outside the lock: readers never wait on the counters
	at := s.now()
	smp := sample{at: at, conns: maps.Clone(c.Connections), in: c.MessagesIn, out: c.Deliveries,
		drops: sum(c.Drops), disc: sum(c.Disconnects), rejections: sum(c.Rejections)}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ring[s.next] = smp
	s.next = (s.next + 1) % len(s.ring)
	s.n = min(s.n+1, len(s.ring))
	s.latest = c
}

func sum(m map[string]float64) float64 {
	var t float64
	for _, v := range m {
		t += v
	}
	return t
}

// Series is the sampled history as parallel arrays, oldest first: entry i
// is the sample taken at T[i] (Unix milliseconds); each rate is per second
// over the time since the sample before it.
type Series struct {
	PeriodMS    int64            `json:"period_ms"`
	T           []int64          `json:"t"`
	In          []float64        `json:"in"`          // messages in per second
	Out         []float64        `json:"out"`         // deliveries per second
	Drops       []float64        `json:"drops"`       // drops per second, all reasons
	Disconnects []float64        `json:"disconnects"` // disconnects per second, all reasons
	Rejections  []float64        `json:"rejections"`  // refused connection attempts per second
	Connections map[string][]int `json:"connections"` // live connections by transport, at T[i]
	Totals      Counters         `json:"-"`
}

// Series returns the samples taken after since, to the millisecond (the zero time: all of
// them), with their rates. The oldest sample kept has no sample before it,
// so it only serves as the base of the next one's rates.
func (s *Sampler) Series(since time.Time) Series {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Series{PeriodMS: s.period.Milliseconds(), T: []int64{}, In: []float64{}, Out: []float64{},
		Drops: []float64{}, Disconnects: []float64{}, Rejections: []float64{}, Connections: map[string][]int{}}
	out.Totals = s.latest
	var transports []string
	for i := 0; i < s.n; i++ {
		for tr := range s.at(i).conns {
			if !slices.Contains(transports, tr) {
				transports = append(transports, tr)
			}
		}
	}
	for _, tr := range transports {
		out.Connections[tr] = []int{}
	}
	for i := 1; i < s.n; i++ {
		prev, cur := s.at(i-1), s.at(i)
		if !since.IsZero() && cur.at.UnixMilli() <= since.UnixMilli() {
			continue // compared as reported (t is in milliseconds): ?since=<a t> excludes that sample
		}
		dt := cur.at.Sub(prev.at).Seconds()
		out.T = append(out.T, cur.at.UnixMilli())
		out.In = append(out.In, rate(prev.in, cur.in, dt))
		out.Out = append(out.Out, rate(prev.out, cur.out, dt))
		out.Drops = append(out.Drops, rate(prev.drops, cur.drops, dt))
		out.Disconnects = append(out.Disconnects, rate(prev.disc, cur.disc, dt))
		out.Rejections = append(out.Rejections, rate(prev.rejections, cur.rejections, dt))
		for _, tr := range transports {
			out.Connections[tr] = append(out.Connections[tr], cur.conns[tr])
		}
	}
	return out
}

// at is the i-th sample kept, oldest first (the caller holds mu).
func (s *Sampler) at(i int) sample {
	return s.ring[(s.next-s.n+i+len(s.ring))%len(s.ring)]
}

// rate is the per-second increase from a to b over dt seconds; a counter
// never decreases, so a negative difference (or no time) reads as zero.
func rate(a, b, dt float64) float64 {
	if dt <= 0 || b < a {
		return 0
	}
	return (b - a) / dt
}
