package bench

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync/atomic"
	"time"
)

// Latency over time: every delivery is also counted in the histogram of
// the slot (timelineSlot wide, on the wall clock) its message was sent in,
// so a run's tail can be matched with what happened when (the gateway's GC
// cycles, sampled from its /metrics once a slot).
const (
	timelineSlot  = 250 * time.Millisecond
	timelineSlots = 512 // a ring: runs up to 128 s keep every slot
)

type timeline struct {
	slots [timelineSlots]atomic.Pointer[timelineHist]
}

type timelineHist struct {
	at int64 // slot number: send time / timelineSlot
	h  histogram
}

func (t *timeline) record(sent int64, d time.Duration) {
	at := sent / int64(timelineSlot)
	if at < 0 {
		return
	}
	p := &t.slots[at%timelineSlots]
	s := p.Load()
	for s == nil || s.at < at { // first delivery of this slot (or the ring wrapped)
		n := &timelineHist{at: at}
		if p.CompareAndSwap(s, n) {
			s = n
			break
		}
		s = p.Load()
	}
	if s.at == at {
		s.h.record(d)
	}
}

// snapshot returns each slot's non-empty buckets, by slot number.
func (t *timeline) snapshot() map[int64]map[int]int64 {
	out := map[int64]map[int]int64{}
	for i := range t.slots {
		if s := t.slots[i].Load(); s != nil {
			out[s.at] = s.h.snapshot()
		}
	}
	return out
}

// TimelinePoint is one slot of the latency-over-time series.
type TimelinePoint struct {
	T         float64 `json:"t_s"` // the slot's start, from the first slot
	Samples   int64   `json:"n"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
	Max       float64 `json:"max_ms"`
	GatewayGC int     `json:"gateway_gc"` // GC cycles the gateway finished in the slot (-1: unknown)
	// ArrivalP99 is the slot's p99 to the kernel's receive stamp on the
	// client socket (0: not measured).
	ArrivalP99 float64 `json:"arrival_p99_ms,omitempty"`
}

// mergeTimelines merges the workers' slots into a series, with each
// slot's arrival p99 from arrivals and the GC cycles counted per slot by
// gcAt (slot number → cumulative count).
func mergeTimelines(parts, arrivals []map[int64]map[int]int64, gcAt map[int64]float64) []TimelinePoint {
	all, arrived := mergeSlots(parts), mergeSlots(arrivals)
	ats := make([]int64, 0, len(all))
	for at := range all {
		ats = append(ats, at)
	}
	sort.Slice(ats, func(i, j int) bool { return ats[i] < ats[j] })
	out := make([]TimelinePoint, 0, len(ats))
	for _, at := range ats {
		l := summarize(all[at])
		gc := -1
		if a, ok := gcAt[at]; ok {
			if b, ok := gcAt[at+1]; ok {
				gc = int(b - a)
			}
		}
		pt := TimelinePoint{T: float64(at-ats[0]) * timelineSlot.Seconds(), Samples: l.Samples,
			P50: l.P50, P99: l.P99, Max: l.Max, GatewayGC: gc}
		if b := arrived[at]; len(b) > 0 {
			pt.ArrivalP99 = summarize(b).P99
		}
		out = append(out, pt)
	}
	return out
}

// mergeSlots adds up the workers' histograms slot by slot.
func mergeSlots(parts []map[int64]map[int]int64) map[int64]map[int]int64 {
	all := map[int64]map[int]int64{}
	for _, p := range parts {
		for at, b := range p {
			m := all[at]
			if m == nil {
				m = map[int]int64{}
				all[at] = m
			}
			for i, n := range b {
				m[i] += n
			}
		}
	}
	return all
}

// sampleGC reads the gateway's finished GC cycles (summed over several
// gateways) at every slot boundary until ctx ends; the map it returns is
// complete once done is closed.
func sampleGC(ctx context.Context, g gateways) (gcAt map[int64]float64, done chan struct{}) {
	gcAt = map[int64]float64{}
	done = make(chan struct{})
	go func() {
		defer close(done)
		for {
			now := time.Now().UnixNano()
			next := (now/int64(timelineSlot) + 1) * int64(timelineSlot)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(next - now)):
			}
			gcAt[next/int64(timelineSlot)] = g.metric("go_gc_duration_seconds_count")
		}
	}()
	return gcAt, done
}

// reportTimeline summarises the series in one line: how many slots passed
// p99 2 ms, the worst, and how many of those had a gateway GC cycle.
func reportTimeline(out io.Writer, tl []TimelinePoint) {
	if len(tl) < 2 {
		return
	}
	worst, over, overGC, arrivalOver, arrived := tl[0], 0, 0, 0, false
	for _, p := range tl {
		if p.ArrivalP99 > 0 {
			arrived = true
		}
		if p.ArrivalP99 > 2 {
			arrivalOver++
		}
		if p.P99 > worst.P99 {
			worst = p
		}
		if p.P99 > 2 {
			over++
			if p.GatewayGC > 0 {
				overGC++
			}
		}
	}
	fmt.Fprintf(out, "latency over time (%v slots): %d of %d slots with p99 > 2 ms (%d of them with a gateway GC cycle); worst p99 %.2f ms at %.2f s (gc %d)\n",
		timelineSlot, over, len(tl), overGC, worst.P99, worst.T, worst.GatewayGC)
	if arrived {
		fmt.Fprintf(out, "  at the client socket (kernel receive stamp): %d of %d slots with p99 > 2 ms\n", arrivalOver, len(tl))
	}
}
