package e2e

// Floods by one WebSocket client that never reads (issue 7, section 2),
// against the built binary, its RSS watched.

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// TestAttackWSPingFlood is issue 7 §2's ping flood: one connection sends
// 125-byte pings as fast as it can and never reads. Each ping used to queue
// a pong outside --queue-bytes (RSS 15 MB → 464 MB in 10 s); now only the
// latest ping is owed a pong.
func TestAttackWSPingFlood(t *testing.T) {
	p := startBinary(t, []string{normalKey, attackKey}, "--queue-bytes", "64KiB")
	normal := mustDial(t, p.url(normalKey))
	p.stillServes(t, normal, normalKey, "start-up")
	// The attacker keeps a default socket receive buffer. With a tiny one
	// (SetReadBuffer 4096) Linux soon stops delivering the never-reading
	// client's own uploads (the flood stalls after ~30,000 pings), so the
	// build from before the fix would pass too: with the default one it
	// grows by 200 MB in 3 s and fails.
	a, before, stopRSS, pr := p.startAttack(t, normal)

	// Bounded by time and by count: at most 1,000,000 pings (131 MB on the
	// wire; before the fix they queued more than 200 MB of pongs).
	const batch, maxPings = 1000, 1_000_000
	var buf []byte
	for range batch {
		buf = append(buf, maskedFrame(ws.OpPing, true, 0, bytes.Repeat([]byte("p"), 125))...)
	}
	sent := 0
	start := time.Now()
	var werr error
	for sent < maxPings && time.Since(start) < 3*time.Second {
		_ = a.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, werr = a.c.Write(buf); werr != nil {
			break
		}
		sent += batch
	}
	elapsed := time.Since(start)
	pr.finish(t)
	p.stillServes(t, normal, normalKey, fmt.Sprintf("%d pings", sent))
	peak := stopRSS()
	after, _ := p.rss()
	stalls := metricValue(t, p.base, "wspubsub_write_stalls_total")
	t.Logf("ping flood: %d pings in %v (write error: %v); gateway RSS before %d KiB, peak %d KiB (+%d KiB), after %d KiB; write stalls %v",
		sent, elapsed.Round(time.Millisecond), werr, before, peak, peak-before, after, stalls)
	if peak-before > rssBound {
		t.Errorf("gateway RSS grew by %d KiB during the ping flood, bound %d KiB", peak-before, rssBound)
	}
	if err := p.alive(); err != nil {
		t.Fatal(err)
	}
}

// TestAttackWSHeartbeatFlood: a client that sends "ping" text (each answered
// with a heartbeat message) and never reads. With the default rate it is
// closed with 4029; with the rate limit lifted the replies count against
// --queue-bytes and it is closed with 4008 once they fill it. Memory stays
// bounded either way.
func TestAttackWSHeartbeatFlood(t *testing.T) {
	t.Run("default rate", func(t *testing.T) {
		p := startBinary(t, []string{normalKey, attackKey}, "--queue-bytes", "64KiB")
		normal := mustDial(t, p.url(normalKey))
		a := mustDial(t, p.url(attackKey))
		eventually(t, 5*time.Second, "2 live", func() bool {
			return metricValue(t, p.base, `wspubsub_connections{transport="websocket"}`) == 2
		})
		// 3,000 pings (30 KB): less than the gateway reads after closing, so
		// the close frame is not lost to a reset.
		var buf []byte
		for range 3000 {
			buf = append(buf, cframe(ws.OpText, true, "ping")...)
		}
		a.writeRaw(buf)
		a.expectClose(4029)
		p.stillServes(t, normal, normalKey, "a heartbeat flood at the default rate")
		eventually(t, 5*time.Second, "disconnects{rate_limited} = 1", func() bool {
			return metricValue(t, p.base, `wspubsub_disconnects_total{reason="rate_limited"}`) == 1
		})
	})

	t.Run("rate limit lifted", func(t *testing.T) {
		p := startBinary(t, []string{normalKey, attackKey}, "--queue-bytes", "64KiB",
			"--client-rate", "100000000", "--client-burst", "100000000", "--write-timeout", "60s")
		normal := mustDial(t, p.url(normalKey))
		// A default receive buffer (see the ping flood), also because the
		// attacker reads everything back at the end, which a 4 KiB window
		// makes slow.
		a, before, stopRSS, pr := p.startAttack(t, normal)

		// How much the kernel buffers between the gateway and a client that
		// does not read differs between machines, so the flood does not
		// guess: it runs until the gateway reports a stalled write (the
		// buffers are full and stay full, as the client reads nothing; from
		// then on replies stay in the queue), then until the gateway has
		// handled 20,000 more pings, whose 380 KB of replies must overflow
		// the 64 KiB queue. Bounded by count and time.
		const batch, maxPings, extra = 1000, 20_000_000, 20_000
		var buf []byte
		for range batch {
			buf = append(buf, cframe(ws.OpText, true, "ping")...)
		}
		handled := func() float64 { return metricValue(t, p.base, `wspubsub_client_messages_total{kind="ping"}`) }
		sent, stalledAt := 0, -1.0 // stalledAt: pings handled when the first stall was seen
		start := time.Now()
		closedEarly := false // the gateway closed the flood before a stall was seen
	flood:
		for {
			if time.Since(start) > 30*time.Second {
				t.Fatalf("after %v: %d pings sent, %v handled, first stall at %v: the queue was not exercised", time.Since(start), sent, handled(), stalledAt)
			}
			if stalledAt < 0 && metricValue(t, p.base, "wspubsub_write_stalls_total") >= 1 {
				stalledAt = handled()
			}
			if stalledAt >= 0 && handled() >= stalledAt+extra {
				break
			}
			if sent >= maxPings {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			for range 20 {
				_ = a.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if _, err := a.c.Write(buf); err != nil {
					// Where the gateway's writer is slower than its reader
					// (machines differ), the replies overflow the queue before
					// any socket write stalls: it closes the flood (4008), and
					// the pings still in flight make that close a reset.
					t.Logf("flood write after %d pings (first stall at %v handled): %v", sent, stalledAt, err)
					closedEarly = true
					break flood
				}
				sent += batch
			}
		}
		flooded := time.Since(start)
		// Now read: what the kernel held, then the close.
		code := 4008
		if !closedEarly {
			var err error
			if code, err = a.closeOneOf(4008, 4029); err != nil {
				// The gateway closed while pings were still in flight, so
				// the close came as a reset: its metrics say which close.
				t.Logf("read after the flood: %v (a close turned into a reset)", err)
				eventually(t, 10*time.Second, "a too_slow or rate_limited disconnect", func() bool {
					switch {
					case metricValue(t, p.base, `wspubsub_disconnects_total{reason="too_slow"}`) == 1:
						code = 4008
					case metricValue(t, p.base, `wspubsub_disconnects_total{reason="rate_limited"}`) == 1:
						code = 4029
					default:
						return false
					}
					return true
				})
			}
		}
		read := time.Since(start) - flooded
		pr.finish(t)
		peak := stopRSS()
		p.stillServes(t, normal, normalKey, fmt.Sprintf("a heartbeat flood of %d pings (closed %d)", sent, code))
		after, _ := p.rss()
		t.Logf("heartbeat flood: %d pings sent in %v, first stall seen after %v handled; read back and closed %d in %v; gateway RSS before %d KiB, peak %d KiB (+%d KiB), after %d KiB",
			sent, flooded.Round(time.Millisecond), stalledAt, code, read.Round(time.Millisecond), before, peak, peak-before, after)
		if peak-before > rssBound {
			t.Errorf("gateway RSS grew by %d KiB during the heartbeat flood, bound %d KiB", peak-before, rssBound)
		}
		reason := map[int]string{4008: "too_slow", 4029: "rate_limited"}[code]
		eventually(t, 10*time.Second, "disconnects{"+reason+"} = 1", func() bool {
			return metricValue(t, p.base, `wspubsub_disconnects_total{reason="`+reason+`"}`) == 1
		})
	})
}

// startAttack connects the attacker next to normal, then starts watching
// the gateway's RSS (from before, in KiB) and probing normal.
func (p *proc) startAttack(t *testing.T, normal *client) (a *client, before int, stopRSS func() int, pr *prober) {
	t.Helper()
	a = mustDial(t, p.url(attackKey))
	eventually(t, 5*time.Second, "2 live", func() bool {
		return metricValue(t, p.base, `wspubsub_connections{transport="websocket"}`) == 2
	})
	before, err := p.rss()
	if err != nil {
		t.Fatal(err)
	}
	return a, before, p.watchRSS(t), startProber(p.target, normal, normalKey)
}
