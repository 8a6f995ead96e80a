package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// syncBuffer is a log destination read while the broker writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeClock is a clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestLineLimiterOnePerMessagePerInterval(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	l := newLineLimiter(10*time.Second, clock.now)
	if ok, n := l.allow("a"); !ok || n != 0 {
		t.Fatalf("first line held back: %v %d", ok, n)
	}
	for range 5 {
		if ok, _ := l.allow("a"); ok {
			t.Fatal("a repeat within the interval got through")
		}
	}
	if ok, _ := l.allow("b"); !ok {
		t.Fatal("another message held back by the first's limit")
	}
	clock.t = clock.t.Add(10 * time.Second)
	if ok, n := l.allow("a"); !ok || n != 5 {
		t.Fatalf("after the interval: %v, suppressed %d, want true 5", ok, n)
	}
	if ok, _ := l.allow("a"); ok {
		t.Fatal("the interval did not start again")
	}
}

func TestLineLimiterBoundedMemory(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	l := newLineLimiter(time.Second, clock.now)
	for i := range 10 * maxLines {
		l.allow(strings.Repeat("x", i))
	}
	if len(l.lines) > maxLines {
		t.Fatalf("%d messages remembered, bound %d", len(l.lines), maxLines)
	}
}

func TestClientLoggerWritesSlogAtWarn(t *testing.T) {
	var buf syncBuffer
	clock := &fakeClock{t: time.Unix(1000, 0)}
	l := &clientLogger{log: slog.New(slog.NewJSONHandler(&buf, nil)), lines: newLineLimiter(ClientLogEvery, clock.now)}
	const format = "redis: connection pool: failed to dial after %d attempts: %v"
	for i := range 4 {
		l.Printf(context.Background(), format, i, "connection refused")
	}
	clock.t = clock.t.Add(ClientLogEvery)
	l.Printf(context.Background(), format, 9, "connection refused")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2 (one, then one after the interval):\n%s", len(lines), buf.String())
	}
	var last struct {
		Level, Msg, Source string
		Suppressed         int
	}
	if err := json.Unmarshal([]byte(lines[1]), &last); err != nil {
		t.Fatal(err)
	}
	if last.Level != "WARN" || last.Source != "go-redis" || last.Suppressed != 3 ||
		last.Msg != "redis client: connection pool: failed to dial after 9 attempts: connection refused" {
		t.Fatalf("line %+v", last)
	}
}

// TestRedisNeverReachedSaysCannotReach: a Redis that was never reached is
// "cannot reach Redis at host:port" (no password), logged once while it
// stays down; once subscribed, a loss is "subscription lost".
func TestRedisNeverReachedSaysCannotReach(t *testing.T) {
	for _, routed := range []bool{false, true} {
		t.Run(map[bool]string{false: "all", true: "keys"}[routed], func(t *testing.T) {
			srv := testenv.Redis(t)
			srv.Stop()
			var buf syncBuffer
			url := "redis://:hunter2-secret@" + srv.Addr()
			b, err := NewRedis(RedisConfig{URL: url, Inbound: "in", Routed: routed, NodeID: "n",
				MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond,
				Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			b.unreachable.now = (&fakeClock{t: time.Unix(1000, 0)}).now // time stands still: never due again
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- b.Run(ctx, func([]byte) {}) }()
			defer func() { cancel(); <-done }()
			want := "cannot reach Redis at " + srv.Addr() + "; retrying"
			waitFor(t, "the cannot-reach line", func() bool { return strings.Contains(buf.String(), want) })
			// Many attempts fail meanwhile (backoff ≤ 20ms); the line is
			// not repeated within unreachableEvery.
			waitFor(t, "further failed attempts", func() bool { return b.unreachable.held("cannot reach") >= 3 })
			if n := strings.Count(buf.String(), want); n != 1 {
				t.Fatalf("cannot-reach logged %d times, want once:\n%s", n, buf.String())
			}
			if strings.Contains(buf.String(), "subscription lost") || strings.Contains(buf.String(), "hunter2") {
				t.Fatalf("log says subscription lost, or holds the password:\n%s", buf.String())
			}
			srv.Start()
			waitFor(t, "ready", b.Ready)
			if !strings.Contains(buf.String(), "redis reached; subscribed") {
				t.Errorf("no line saying Redis was reached:\n%s", buf.String())
			}
			srv.Stop()
			waitFor(t, "the loss line", func() bool { return strings.Contains(buf.String(), "subscription lost") })
		})
	}
}

// held is how many lines of msg are being held back.
func (l *lineLimiter) held(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.lines[msg]; st != nil {
		return st.suppressed
	}
	return 0
}

// waitFor waits, with a generous bound, until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
