package hub

import (
	"sync"
	"time"
)

// limiter is a set of token buckets, one per name (a key, a client
// address), each refilled at rate tokens per second up to burst. A bucket
// that has refilled completely is forgotten: it is indistinguishable from a
// new one, so memory is bounded by the names active within burst/rate
// seconds and forgetting changes no answer.
type limiter struct {
	rate, burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), buckets: map[string]*bucket{}}
}

// level returns name's tokens at now (under l.mu).
func (l *limiter) level(name string, now time.Time) float64 {
	b := l.buckets[name]
	if b == nil {
		return l.burst
	}
	return min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
}

// has reports whether name has a token left, without taking it.
func (l *limiter) has(name string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.level(name, now) >= 1
}

// take takes one token from name's bucket and reports whether there was one.
func (l *limiter) take(name string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	t := l.level(name, now)
	if t < 1 {
		return false
	}
	if b := l.buckets[name]; b != nil {
		b.tokens, b.at = t-1, now
	} else {
		l.buckets[name] = &bucket{tokens: t - 1, at: now}
	}
	return true
}

// sweep forgets full buckets, at most once a second (under l.mu).
func (l *limiter) sweep(now time.Time) {
	if now.Sub(l.swept) < time.Second {
		return
	}
	l.swept = now
	for name := range l.buckets {
		if l.level(name, now) >= l.burst {
			delete(l.buckets, name)
		}
	}
}

// size returns the number of buckets held (for tests).
func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
