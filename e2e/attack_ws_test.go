package e2e

// Attacks on the WebSocket side of a running gateway (issue 7, sections 1
// and 2): each test shows the documented outcome for the attacking
// connection, and that the gateway is alive and a normal client on it
// still receives what is published.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/gateway"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

// TestAttackWSCrashFragmentWithHugeLength is the remote crash of issue 7 §1:
// a 1-byte non-final text frame, then a continuation frame declaring
// 2^63−1 bytes. The size check used to add before comparing, overflowed and
// the process died in makeslice. Now: 1009 before anything is allocated.
func TestAttackWSCrashFragmentWithHugeLength(t *testing.T) {
	s := newStack(t, []string{"--max-client-bytes", "1KiB"}, normalKey, attackKey)
	g := stackTarget(s)
	normal := mustDial(t, g.url(normalKey))
	waitLive(t, s, 1)

	for _, length := range []int64{math.MaxInt64, math.MaxInt64 - 1, 1<<63 - 1024, 1<<62 + 1, 1 << 32, 65536, 1024} {
		a := mustDial(t, g.url(attackKey))
		a.writeRaw(cframe(ws.OpText, false, "a"), headerOnly(ws.OpContinuation, true, length))
		a.expectClose(1009)
		g.stillServes(t, normal, normalKey, fmt.Sprintf("a continuation declaring %d bytes", length))
	}
	waitLive(t, s, 1)
	if got := testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues("too_big")); got != 7 {
		t.Errorf("disconnects{too_big} = %v, want 7", got)
	}
	if got := testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues("internal_error")); got != 0 {
		t.Errorf("disconnects{internal_error} = %v", got)
	}
}

// TestAttackWSCrashSizeBoundaries: --max-client-bytes counts the whole
// message across its fragments: exactly the limit is accepted, one byte
// more is 1009. Control frames between fragments do not count.
func TestAttackWSCrashSizeBoundaries(t *testing.T) {
	const limit = 1024
	s := newStack(t, []string{"--max-client-bytes", "1KiB"}, normalKey, attackKey)
	g := stackTarget(s)
	normal := mustDial(t, g.url(normalKey))
	waitLive(t, s, 1)
	x := strings.Repeat("x", limit)

	a := mustDial(t, g.url(attackKey))
	a.writeRaw(
		cframe(ws.OpText, false, x[:1]),
		cframe(ws.OpContinuation, false, x[:limit/2]),
		cframe(ws.OpPing, true, strings.Repeat("p", 125)), // between fragments: not counted
		cframe(ws.OpContinuation, true, x[:limit/2-1]),
	)
	a.writeRaw(cframe(ws.OpText, true, x)) // one frame of exactly the limit
	a.send("ping")
	a.expect("heartbeat message") // the pong is answered on the way, and skipped
	waitLive(t, s, 2)

	a.writeRaw(cframe(ws.OpText, false, x[:1]), cframe(ws.OpContinuation, false, x[:limit/2]), cframe(ws.OpContinuation, true, x[:limit/2]))
	a.expectClose(1009)
	g.stillServes(t, normal, normalKey, "a fragmented message one byte over the limit")

	b := mustDial(t, g.url(attackKey))
	b.writeRaw(cframe(ws.OpText, true, x+"y"))
	b.expectClose(1009)
	g.stillServes(t, normal, normalKey, "a frame one byte over the limit")
}

// TestAttackWSProtocolViolations: frames that break RFC 6455 close the
// attacking connection with 1002 (1007 for text that is not UTF-8); the
// gateway keeps serving.
func TestAttackWSProtocolViolations(t *testing.T) {
	s := newStack(t, nil, normalKey, attackKey)
	g := stackTarget(s)
	normal := mustDial(t, g.url(normalKey))
	waitLive(t, s, 1)
	cases := []struct {
		name   string
		frames [][]byte
		code   int
		reason string
	}{
		{"continuation without a message", [][]byte{cframe(ws.OpContinuation, true, "x")}, 1002, "protocol"},
		{"text inside a fragmented message", [][]byte{cframe(ws.OpText, false, "a"), cframe(ws.OpText, true, "b")}, 1002, "protocol"},
		{"RSV1 set", [][]byte{maskedFrame(ws.OpText, true, ws.Rsv(true, false, false), []byte("ping"))}, 1002, "protocol"},
		{"RSV2+RSV3 on a ping", [][]byte{maskedFrame(ws.OpPing, true, ws.Rsv(false, true, true), nil)}, 1002, "protocol"},
		{"unmasked frame", [][]byte{ws.MustCompileFrame(ws.NewTextFrame([]byte("ping")))}, 1002, "protocol"},
		{"ping of 126 bytes", [][]byte{cframe(ws.OpPing, true, strings.Repeat("p", 126))}, 1002, "protocol"},
		{"close declaring 2^63-1 bytes", [][]byte{headerOnly(ws.OpClose, true, math.MaxInt64)}, 1002, "protocol"},
		{"fragmented ping", [][]byte{cframe(ws.OpPing, false, "a"), cframe(ws.OpContinuation, true, "b")}, 1002, "protocol"},
		{"length with the MSB set", [][]byte{{0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}}, 1002, "protocol"},
		{"invalid UTF-8 text", [][]byte{cframe(ws.OpText, true, "pi\xffng")}, 1007, "invalid_data"},
		{"UTF-8 cut between fragments", [][]byte{cframe(ws.OpText, false, "\xe2\x82"), cframe(ws.OpContinuation, true, "x")}, 1007, "invalid_data"},
	}
	want := map[string]float64{}
	for _, tc := range cases {
		a := mustDial(t, g.url(attackKey))
		a.writeRaw(tc.frames...)
		a.expectClose(tc.code)
		want[tc.reason]++
		g.stillServes(t, normal, normalKey, tc.name+fmt.Sprintf(" (closed %d)", tc.code))
	}
	waitLive(t, s, 1)
	for reason, n := range want {
		if got := testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues(reason)); got != n {
			t.Errorf("disconnects{%s} = %v, want %v", reason, got, n)
		}
	}
}

// panicStore is a key store with a bug: asked about one key, it panics.
type panicStore struct {
	*keystore.Memory
	bomb  string
	calls atomic.Int64 // lookups of the bomb key
}

func (s *panicStore) Contains(ctx context.Context, key string) (bool, error) {
	if key == s.bomb {
		s.calls.Add(1)
		panic("key store bug")
	}
	return s.Memory.Contains(ctx, key)
}

// errorLines is a slog handler that keeps error-level messages and
// forwards every record to next.
type errorLines struct {
	next  slog.Handler
	mu    *sync.Mutex
	lines *[]string
}

func (h errorLines) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h errorLines) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		var b strings.Builder
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			if a.Key != "stack" {
				fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			}
			return true
		})
		h.mu.Lock()
		*h.lines = append(*h.lines, b.String())
		h.mu.Unlock()
	}
	return h.next.Handle(ctx, r)
}

func (h errorLines) WithAttrs(as []slog.Attr) slog.Handler {
	h.next = h.next.WithAttrs(as)
	return h
}

func (h errorLines) WithGroup(n string) slog.Handler {
	h.next = h.next.WithGroup(n)
	return h
}

// startInProcess runs a gateway in this process with opts and args (on the
// in-process broker unless args name a Redis; g publishes through POST
// /publish) and waits until it is ready.
func startInProcess(t *testing.T, opts gateway.Options, args ...string) (*gateway.Gateway, *target) {
	t.Helper()
	base := []string{"--listen", "127.0.0.1:0", "--shutdown-timeout", "5s", "--log-level", "debug"}
	cfg, err := config.ParseServe(append(base, args...), func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	gw, err := gateway.New(cfg, opts)
	if err != nil {
		t.Fatalf("gateway: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("gateway Run: %v", err)
			}
		case <-time.After(patience):
			t.Errorf("gateway did not stop within %v", patience)
		}
	})
	g := &target{base: "http://" + gw.Addr().String(), path: cfg.Path, alive: func() error { return nil }}
	g.publish = func(raw string) error { return publishHTTP(g.base, raw) }
	waitReadyAt(t, gw.Addr().String())
	return gw, g
}

// TestAttackWSPanicRecovery: a bug reached by one client's input (here a
// key store that panics for one key) ends that connection with 1011 and one
// redacted error line; the process and every other client carry on.
func TestAttackWSPanicRecovery(t *testing.T) {
	const bomb = "bomb-key-0001-secret"
	store := &panicStore{Memory: keystore.NewMemory(normalKey, attackKey), bomb: bomb}
	var mu sync.Mutex
	var lines []string
	log := slog.New(errorLines{next: testenv.Logger(t).Handler(), mu: &mu, lines: &lines})
	gw, g := startInProcess(t, gateway.Options{Store: store, Logger: log})
	m := gw.Metrics()

	normal := mustDial(t, g.url(normalKey))
	bystander := mustDial(t, g.url(attackKey)) // another client, connected before the attack
	eventually(t, 5*time.Second, "2 live", func() bool { return gw.Hub().Live() == 2 })

	const attacks = 20
	for i := range attacks {
		a := mustDial(t, g.url(bomb))
		a.expectClose(1011)
		if i == 0 {
			g.stillServes(t, normal, normalKey, "the first panicking connection")
		}
	}
	g.stillServes(t, normal, normalKey, fmt.Sprintf("%d panicking connections", attacks))
	if err := publishHTTP(g.base, envelope(`{"to":"bystander"}`, attackKey)); err != nil {
		t.Fatal(err)
	}
	bystander.expect(`{"data":{"to":"bystander"}}`)
	// And a new client is still admitted.
	late := mustDial(t, g.url(attackKey))
	late.send("ping")
	late.expect("heartbeat message")

	if n := store.calls.Load(); n != attacks {
		t.Errorf("bomb key looked up %d times, want %d", n, attacks)
	}
	mu.Lock()
	got := append([]string(nil), lines...)
	mu.Unlock()
	if len(got) != attacks {
		t.Errorf("%d error lines, want one per panic (%d): %q", len(got), attacks, got)
	}
	for _, l := range got {
		if !strings.Contains(l, "internal error") || !strings.Contains(l, "key store bug") {
			t.Errorf("error line %q: want the internal error and its panic", l)
		}
		if strings.Contains(l, "secret") {
			t.Errorf("error line shows the whole key: %q", l)
		}
	}
	// A panic during admission ends a connection that was never
	// registered: it is counted as a rejection for internal_error, and
	// leaves no session behind.
	eventually(t, 5*time.Second, "3 live", func() bool { return gw.Hub().Live() == 3 })
	if got := testutil.ToFloat64(m.Rejections.WithLabelValues("internal_error")); got != attacks {
		t.Errorf("rejections{internal_error} = %v, want %d", got, attacks)
	}
}
