package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// watch subscribes to Redis channels and returns their messages.
func watch(t *testing.T, s *stack, channels ...string) <-chan *redis.Message {
	t.Helper()
	ps := s.rdb.Subscribe(context.Background(), channels...)
	if _, err := ps.Receive(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range channels[1:] {
		if _, err := ps.Receive(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { ps.Close() })
	return ps.Channel()
}

func nextEvent(t *testing.T, ch <-chan *redis.Message) *redis.Message {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(patience):
		t.Fatalf("no event within %v", patience)
		return nil
	}
}

func TestConnectDisconnectEventsBareKey(t *testing.T) {
	s := newStack(t, nil, demoKey)
	ev := watch(t, s, "connected", "disconnected")
	bad := mustDial(t, s.url("unknown"))
	bad.expectClose(4401)
	c := mustDial(t, s.url(demoKey))
	m := nextEvent(t, ev)
	if m.Channel != "connected" || m.Payload != demoKey {
		t.Fatalf("got %s %q, want connected %q", m.Channel, m.Payload, demoKey)
	}
	c.close()
	m = nextEvent(t, ev)
	if m.Channel != "disconnected" || m.Payload != demoKey {
		t.Fatalf("got %s %q, want disconnected %q", m.Channel, m.Payload, demoKey)
	}
}

func TestConnectDisconnectEventsJSON(t *testing.T) {
	s := newStack(t, []string{"--event-format", "json", "--node-id", "node-a"}, demoKey)
	ev := watch(t, s, "connected", "disconnected")
	c := mustDial(t, s.url(demoKey))
	var e struct{ Event, Key, Conn, Node, Transport, At string }
	for _, want := range []string{"connected", "disconnected"} {
		m := nextEvent(t, ev)
		if err := json.Unmarshal([]byte(m.Payload), &e); err != nil {
			t.Fatalf("event %q: %v", m.Payload, err)
		}
		if m.Channel != want || e.Event != want || e.Key != demoKey || e.Node != "node-a" || e.Transport != "websocket" || e.Conn == "" {
			t.Fatalf("bad %s event on %s: %+v", want, m.Channel, e)
		}
		if _, err := time.Parse(time.RFC3339Nano, e.At); err != nil {
			t.Fatalf("bad time %q", e.At)
		}
		c.close()
	}
}

// TestGracefulShutdown: without a drain (--drain-period 0) every client
// gets 1001 at once (the drain: e2e/drain_test.go, internal/gateway).
func TestGracefulShutdown(t *testing.T) {
	s := newStack(t, []string{"--drain-period", "0"}, demoKey, "k2")
	ev := watch(t, s, "disconnected")
	a, b := mustDial(t, s.url(demoKey)), mustDial(t, s.url("k2"))
	waitLive(t, s, 2)
	start := time.Now()
	s.cancel()
	a.expectClose(1001)
	b.expectClose(1001)
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(patience):
		t.Fatalf("gateway did not stop within %v", patience)
	}
	s.cancel = nil
	t.Logf("shutdown took %v", time.Since(start))
	got := map[string]bool{}
	for range 2 {
		got[nextEvent(t, ev).Payload] = true
	}
	if !got[demoKey] || !got["k2"] {
		t.Fatalf("disconnected events: %v", got)
	}
	if _, err := net.DialTimeout("tcp", s.gw.Addr().String(), time.Second); err == nil {
		t.Fatal("still accepting after shutdown")
	}
}

func TestIdleConnectionsAreReaped(t *testing.T) {
	// The live peer has seconds to answer a ping, the dead one none.
	s := newStack(t, []string{"--idle-timeout", "3s", "--ping-interval", "500ms"}, demoKey)
	dead := mustDial(t, s.url(demoKey))
	dead.pong = false
	alive := mustDial(t, s.url(demoKey))
	go func() { _, _ = alive.next(patience) }() // answers pings from the start
	waitLive(t, s, 2)
	_, err := dead.next(patience)
	if err == nil {
		t.Fatal("dead peer got a message instead of being closed")
	}
	waitLive(t, s, 1)
	if got := testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues("idle")); got != 1 {
		t.Fatalf("disconnects{idle} = %v", got)
	}
}

func TestSlowClientIsClosedWith4008(t *testing.T) {
	s := newStack(t, []string{"--queue-bytes", "64KiB", "--max-message-bytes", "16KiB", "--write-timeout", "1s"}, demoKey, "fast")
	// The slow client never reads, with a tiny receive buffer.
	d := ws.Dialer{Timeout: patience, NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			_ = c.(*net.TCPConn).SetReadBuffer(4096)
		}
		return c, err
	}}
	slow, _, _, err := d.Dial(context.Background(), s.url(demoKey))
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fast := mustDial(t, s.url("fast"))
	waitLive(t, s, 2)
	big := `"` + strings.Repeat("x", 10000) + `"`
	// How much the kernel buffers before the gateway's writes stall differs
	// between machines: publish until the slow client is closed, bounded by
	// patience, not by a count.
	start := time.Now()
	for i := 0; time.Since(start) < patience; i++ {
		s.publish(envelope(big, demoKey))
		if testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues("too_slow")) == 1 {
			break
		}
		if i%10 == 0 {
			s.publish(envelope(`{"i":1}`, "fast"))
			fast.expect(`{"data":{"i":1}}`)
		}
	}
	eventually(t, 10*time.Second, "slow client closed", func() bool {
		return testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues("too_slow")) == 1
	})
	waitLive(t, s, 1)
	s.publish(envelope(`{"after":1}`, "fast"))
	fast.expect(`{"data":{"after":1}}`)
}

func TestClientLimits(t *testing.T) {
	s := newStack(t, []string{"--max-client-bytes", "1KiB", "--max-connections", "2", "--allowed-origins", "https://app.example.com"}, demoKey)
	big := mustDial(t, s.url(demoKey))
	big.send(strings.Repeat("y", 2000))
	big.expectClose(1009)
	waitLive(t, s, 0)

	// Origins: foreign refused with 403; allowed and absent pass.
	_, err := dial(t, s.url(demoKey), http.Header{"Origin": {"https://evil.example.com"}})
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("foreign origin: err = %v, want 403", err)
	}
	ok1, err := dial(t, s.url(demoKey), http.Header{"Origin": {"https://app.example.com"}})
	if err != nil {
		t.Fatalf("allowed origin: %v", err)
	}
	// The refused big one may still hold its transport slot a moment after
	// it left the hub (its writer tearing down): the limit counts sockets.
	var ok2 *client
	early := 0.0 // refusals of that moment, counted like the one below
	eventually(t, 5*time.Second, "a second connection admitted", func() bool {
		c, err := dial(t, s.url(demoKey), nil)
		if err != nil {
			early++
		}
		ok2 = c
		return err == nil
	})
	waitLive(t, s, 2)
	_, err = dial(t, s.url(demoKey), nil)
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("over the connection limit: err = %v, want 503", err)
	}
	ok1.close()
	ok2.close()
	for r, want := range map[string]float64{"origin": 1, "limit": 1 + early} {
		if got := testutil.ToFloat64(s.gw.Metrics().Rejections.WithLabelValues(r)); got != want {
			t.Errorf("rejections{%s} = %v, want %v", r, got, want)
		}
	}
}

// A client that stops reading for a while (socket buffers full, writes
// stall) and then resumes gets everything, in order.
func TestStalledClientResumesWithoutLoss(t *testing.T) {
	s := newStack(t, []string{"--queue-bytes", "256MiB", "--write-timeout", "20s"}, demoKey)
	d := ws.Dialer{Timeout: patience, NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			_ = c.(*net.TCPConn).SetReadBuffer(64 << 10)
		}
		return c, err
	}}
	nc, br, _, err := d.Dial(context.Background(), s.url(demoKey))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := &client{t: t, c: nc, r: nc, pong: true}
	if br != nil {
		c.r = io.MultiReader(br, nc)
	}
	waitLive(t, s, 1)
	// How much the kernel buffers between a non-reading client and the
	// gateway differs from machine to machine, so the test does not guess:
	// it publishes in batches until the gateway reports a stalled write
	// (bounded by count and time), then reads everything back.
	pad := strings.Repeat("p", 1000)
	stalls := func() float64 { return testutil.ToFloat64(s.gw.Metrics().WriteStalls) }
	const batch, limit = 1000, 120_000 // at most ≈ 120 MB, far beyond any socket buffer
	n := 0
	deadline := time.Now().Add(60 * time.Second)
	for stalls() < 1 && n < limit && time.Now().Before(deadline) {
		pipe := s.rdb.Pipeline()
		for range batch {
			pipe.Publish(context.Background(), "my_channel", envelope(fmt.Sprintf(`{"seq":%d,"pad":"%s"}`, n, pad), demoKey))
			n++
		}
		if _, err := pipe.Exec(context.Background()); err != nil {
			t.Fatal(err)
		}
		target := float64(n)
		eventually(t, 10*time.Second, "batch delivered to the queue", func() bool {
			return testutil.ToFloat64(s.gw.Metrics().Deliveries) >= target || stalls() >= 1
		})
	}
	if stalls() < 1 {
		t.Fatalf("no write stalled after %d messages (≈ %d MB): the slow lane was not exercised", n, n/1000)
	}
	t.Logf("first stall after ≤ %d messages", n)
	start := time.Now()
	defer func() { t.Logf("read %d messages in %v", n, time.Since(start)) }()
	for i := range n {
		got, err := c.next(patience)
		if err != nil || got != fmt.Sprintf(`{"data":{"seq":%d,"pad":"%s"}}`, i, pad) {
			t.Fatalf("message %d: %v (got %.60s…; stalls %v, br %v, live %d, deliveries %v, in %v)", i, err, got, stalls(), br != nil, s.gw.Hub().Live(), testutil.ToFloat64(s.gw.Metrics().Deliveries), testutil.ToFloat64(s.gw.Metrics().MessagesIn))
		}
	}
}
