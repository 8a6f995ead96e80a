package main

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Memory after a burst of connections: each handshake leaves garbage
// behind, and the heap grew to hold it. With little traffic afterwards no
// GC cycle comes to collect it (the runtime forces one only every two
// minutes), and the pages freed by the last cycle go back to the OS only
// slowly, so a gateway that has just taken 18,000 connections holds
// ≈ 0.5 KB per connection it does not use, for minutes. trimWhenQuiet
// collects it and gives the pages back — once the process has gone quiet,
// never under load (a forced GC cycle is what makes the latency tail,
// BENCHMARKS.md).

// Under traffic the other way round: each message leaves garbage (the Redis
// reader's, the envelope's), and at 20,000 msg/s on 10,000 connections a
// GC cycle came every 0.7 s; the latency-over-time plot's spikes fall on
// them (BENCHMARKS.md). While the process is busy delivering (allocating
// fast with at least busyDeliveries a second going out: a connect storm,
// which leaves the garbage the trim is for, does not count), the GC target rises so
// that the heap may grow by busyHeadroom beyond the live heap, at most
// busyGCPercent: cycles come about 4–5× less often (23 → 5 per 15 s run).
// Once quiet, the configured target is back and the trim returns the
// memory.
const (
	busyGCPercent  = 400
	busyHeadroom   = 256 << 20 // bytes: what a busy gateway may hold beyond the configured target's heap
	busyDeliveries = 1000      // per second
)

// busyPercent is the GC target while busy: base raised to busyGCPercent,
// unless that would let the heap grow more than busyHeadroom beyond live;
// never below base, and GC off (base < 0) stays off.
func busyPercent(base int, live uint64) int {
	if base < 0 {
		return base
	}
	p := busyGCPercent
	if live > 0 && uint64(busyHeadroom)*100/live < uint64(p) {
		p = int(uint64(busyHeadroom) * 100 / live)
	}
	return max(p, base)
}

const (
	trimEvery    = 2 * time.Second  // how often the heap is looked at
	trimQuietBPS = 1 << 20          // allocation rate under which the process is quiet (bytes/s)
	trimGarbage  = 2 << 20          // reclaimable memory worth a trim (bytes)
	trimMinGap   = 10 * time.Second // at most one trim this often
)

// heapSample is what the trim decision reads from runtime/metrics.
type heapSample struct {
	allocs  uint64 // bytes allocated since the start (cumulative)
	objects uint64 // bytes in heap objects now, garbage included
	live    uint64 // bytes live after the last GC cycle
	free    uint64 // bytes of free heap pages not yet given back to the OS
}

// reclaimable is the garbage (objects beyond the live heap) and the free
// pages the process still holds.
func (h heapSample) reclaimable() uint64 {
	r := h.free
	if h.objects > h.live {
		r += h.objects - h.live
	}
	return r
}

// busy says, from two samples taken trimEvery apart, that the process
// allocates more than trimQuietBPS.
func busy(prev, cur heapSample) bool {
	return cur.allocs-prev.allocs > uint64(trimQuietBPS*trimEvery.Seconds())
}

// shouldTrim decides on two samples taken trimEvery apart: quiet
// (allocating less than trimQuietBPS) and holding more than trimGarbage
// that could be given back, an eighth of the live heap at least.
func shouldTrim(prev, cur heapSample) bool {
	if busy(prev, cur) {
		return false
	}
	r := cur.reclaimable()
	return r > trimGarbage && r > cur.live/8
}

func readHeap(s []metrics.Sample) heapSample {
	metrics.Read(s)
	return heapSample{allocs: s[0].Value.Uint64(), objects: s[1].Value.Uint64(), live: s[2].Value.Uint64(), free: s[3].Value.Uint64()}
}

// manageMemory runs until ctx ends: the GC target is busyPercent(base)
// while busy delivering (deliveries counts them since the start), base
// (--gc-percent) otherwise, and the heap is trimmed when quiet.
func manageMemory(ctx context.Context, log *slog.Logger, base int, deliveries func() float64) {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/free:bytes"}}
	t := time.NewTicker(trimEvery)
	defer t.Stop()
	prev := readHeap(s)
	var last time.Time
	target, sent := base, deliveries()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur := readHeap(s)
		want, now := base, deliveries()
		if busy(prev, cur) && now-sent >= busyDeliveries*trimEvery.Seconds() {
			want = busyPercent(base, cur.live)
		}
		sent = now
		if want != target {
			debug.SetGCPercent(want)
			log.Debug("GC target set", "percent", want, "busy", want != base, "live_bytes", cur.live)
			target = want
		}
		if shouldTrim(prev, cur) && time.Since(last) >= trimMinGap {
			debug.FreeOSMemory()
			last = time.Now()
			log.Debug("memory trimmed after a quiet spell", "reclaimable_bytes", cur.reclaimable(), "live_bytes", cur.live)
			cur = readHeap(s)
		}
		prev = cur
	}
}
