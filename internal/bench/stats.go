package bench

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// histogram is a lock-free log-linear latency histogram: 16 linear
// sub-buckets per power of two of microseconds, so percentiles are within
// ~6%; recording is one atomic add.
type histogram struct {
	counts [64 * 16]atomic.Int64
}

func bucketOf(d time.Duration) int {
	us := uint64(d / time.Microsecond)
	if us < 16 {
		return int(us)
	}
	exp := bits.Len64(us) - 5 // us in [16·2^exp, 32·2^exp)
	sub := int(us>>uint(exp)) - 16
	i := 16 + exp*16 + sub
	if i >= len(histogram{}.counts) {
		return len(histogram{}.counts) - 1
	}
	return i
}

// bucketUpper is the upper bound of bucket i in microseconds.
func bucketUpper(i int) float64 {
	if i < 16 {
		return float64(i + 1)
	}
	exp := (i - 16) / 16
	sub := (i - 16) % 16
	return float64((16 + sub + 1) << uint(exp))
}

func (h *histogram) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucketOf(d)].Add(1)
}

// snapshot returns the non-empty buckets.
func (h *histogram) snapshot() map[int]int64 {
	m := map[int]int64{}
	for i := range h.counts {
		if n := h.counts[i].Load(); n > 0 {
			m[i] = n
		}
	}
	return m
}

// Latency is a latency summary in milliseconds.
type Latency struct {
	Samples int64   `json:"samples"`
	P50     float64 `json:"p50_ms"`
	P90     float64 `json:"p90_ms"`
	P99     float64 `json:"p99_ms"`
	P999    float64 `json:"p999_ms"`
	Max     float64 `json:"max_ms"`
}

func summarize(buckets map[int]int64) Latency {
	var total int64
	maxI := 0
	for i, n := range buckets {
		total += n
		maxI = max(maxI, i)
	}
	l := Latency{Samples: total}
	if total == 0 {
		return l
	}
	pct := func(p float64) float64 {
		want := int64(math.Ceil(p * float64(total)))
		var seen int64
		for i := 0; i <= maxI; i++ {
			seen += buckets[i]
			if seen >= want {
				return bucketUpper(i) / 1000
			}
		}
		return bucketUpper(maxI) / 1000
	}
	l.P50, l.P90, l.P99, l.P999, l.Max = pct(0.5), pct(0.9), pct(0.99), pct(0.999), bucketUpper(maxI)/1000
	return l
}

// seen is a concurrent bit set of message sequence numbers, to tell
// duplicates from first deliveries.
type seen struct{ words []atomic.Uint64 }

func newSeen(n int) *seen { return &seen{words: make([]atomic.Uint64, (n+63)/64)} }

// mark sets seq and reports whether it was already set. Out-of-range
// sequence numbers count as new (they are reported as unexpected).
func (s *seen) mark(seq int64) (dup bool, ok bool) {
	if seq < 0 || int(seq/64) >= len(s.words) {
		return false, false
	}
	bit := uint64(1) << uint(seq%64)
	old := s.words[seq/64].Or(bit)
	return old&bit != 0, true
}

func (s *seen) count() int64 {
	var n int64
	for i := range s.words {
		n += int64(bits.OnesCount64(s.words[i].Load()))
	}
	return n
}
