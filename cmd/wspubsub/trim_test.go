package main

import (
	"runtime/metrics"
	"testing"
)

func TestShouldTrimOnlyWhenQuietWithGarbage(t *testing.T) {
	const mb = 1 << 20
	quiet := heapSample{allocs: 100 * mb}
	cases := []struct {
		name string
		cur  heapSample
		want bool
	}{
		{"after a connect burst", heapSample{allocs: 100*mb + 10_000, objects: 60 * mb, live: 25 * mb}, true},
		{"under load", heapSample{allocs: 200 * mb, objects: 60 * mb, live: 25 * mb}, false},
		{"little garbage", heapSample{allocs: 100 * mb, objects: 26 * mb, live: 25 * mb}, false},
		{"a few MB of garbage after a connect burst", heapSample{allocs: 100 * mb, objects: 30 * mb, live: 25 * mb}, true},
		{"garbage small against the live heap", heapSample{allocs: 100 * mb, objects: 1010 * mb, live: 1000 * mb}, false},
		{"objects below live (a GC in between)", heapSample{allocs: 100 * mb, objects: 20 * mb, live: 25 * mb}, false},
		{"pages freed by the last GC, still held", heapSample{allocs: 100 * mb, objects: 29 * mb, live: 30 * mb, free: 30 * mb}, true},
	}
	for _, c := range cases {
		if got := shouldTrim(quiet, c.cur); got != c.want {
			t.Errorf("%s: shouldTrim = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestBusyPercentBoundsTheHeadroom(t *testing.T) {
	const mb = 1 << 20
	cases := []struct {
		base int
		live uint64
		want int
	}{
		{100, 25 * mb, 400},   // 10,000 connections: 4× the live heap fits in the headroom
		{100, 128 * mb, 200},  // 256 MB beyond 128 MB live
		{100, 1024 * mb, 100}, // the headroom would be below the configured target's
		{25, 1024 * mb, 25},
		{800, 25 * mb, 800}, // never below what was asked for
		{-1, 25 * mb, -1},   // GC off stays off
		{100, 0, 400},
	}
	for _, c := range cases {
		if got := busyPercent(c.base, c.live); got != c.want {
			t.Errorf("busyPercent(%d, %d MB) = %d, want %d", c.base, c.live/mb, got, c.want)
		}
	}
}

// The runtime knows every metric the trim reads.
func TestTrimMetricsExist(t *testing.T) {
	known := map[string]bool{}
	for _, d := range metrics.All() {
		known[d.Name] = true
	}
	for _, n := range []string{"/gc/heap/allocs:bytes", "/memory/classes/heap/objects:bytes", "/gc/heap/live:bytes", "/memory/classes/heap/free:bytes"} {
		if !known[n] {
			t.Fatalf("runtime/metrics has no %s", n)
		}
	}
}
