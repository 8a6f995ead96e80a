// Package ratelimit is a set of token buckets keyed by name (a key, a
// client address, a log message), with memory bounded by the names active
// lately. It counts and nothing else: what to do past a limit is its
// callers'.
package ratelimit

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Keyed is a set of token buckets, one per name (a key, a client
// address), each refilled at rate tokens per second up to burst. A bucket
// that has refilled completely is forgotten: it is indistinguishable from a
// new one, so memory is bounded by the names active within burst/rate
// seconds and forgetting changes no answer.
type Keyed struct {
	rate, burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

// New returns buckets of burst tokens refilled at rate per second.
func New(rate float64, burst int) *Keyed {
	return &Keyed{rate: rate, burst: float64(burst), buckets: map[string]*bucket{}}
}

// level returns name's tokens at now (under l.mu).
func (l *Keyed) level(name string, now time.Time) float64 {
	b := l.buckets[name]
	if b == nil {
		return l.burst
	}
	return min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
}

// Has reports whether name has a token left, without taking it.
func (l *Keyed) Has(name string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.level(name, now) >= 1
}

// Take takes one token from name's bucket and reports whether there was one.
func (l *Keyed) Take(name string, now time.Time) bool {
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
func (l *Keyed) sweep(now time.Time) {
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

// Len returns the number of buckets held.
func (l *Keyed) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// Sampled logs through log unless lines of the same message come faster
// than rate per second beyond burst: lines about refusals are an attacker's
// to multiply (every refusal is counted in a metric anyway).
type Sampled struct {
	log   *slog.Logger
	lines *Keyed
}

// NewSampled returns a Sampled logger.
func NewSampled(log *slog.Logger, rate float64, burst int) *Sampled {
	return &Sampled{log: log, lines: New(rate, burst)}
}

// Log logs msg at level unless its message is over its rate.
func (s *Sampled) Log(level slog.Level, msg string, args ...any) {
	if s.lines.Take(msg, time.Now()) {
		s.log.Log(context.Background(), level, msg, args...)
	}
}
