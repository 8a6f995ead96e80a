//go:build linux

package websocket

// Tests of the poller path (netpoll.go): the harness's loopback TCP
// connections are watched by the poller; net.Pipe and wrapped ones read on
// goroutines of their own (conn_test.go covers both through the same
// frame handler).

import (
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// watched returns the connections in the poller's set.
func (h *harness) watched() []*conn {
	p := h.srv.poll
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var cs []*conn
	for _, s := range p.slots {
		if s.c != nil {
			cs = append(cs, s.c)
		}
	}
	return cs
}

// idle reports whether c is in the poller's set with no goroutine reading it.
func (h *harness) idle(c *conn) bool {
	p := h.srv.poll
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.slot(c) != nil && !c.busy
}

// only returns the one watched connection.
func (h *harness) only() *conn {
	h.t.Helper()
	var cs []*conn
	waitFor(h.t, 10*time.Second, "one watched connection", func() bool { cs = h.watched(); return len(cs) == 1 })
	return cs[0]
}

// allDisconnects sums the disconnect counter over its reasons.
func (h *harness) allDisconnects() float64 {
	n := 0.0
	for _, r := range []string{metrics.DiscClient, metrics.DiscIdle, metrics.DiscTooSlow, metrics.DiscRevoked, metrics.DiscShutdown,
		metrics.DiscWriteError, metrics.DiscProtocol, metrics.DiscTooBig, metrics.DiscRateLimited, metrics.DiscInternal, metrics.DiscInvalidData} {
		n += h.disconnects(r)
	}
	return n
}

// An idle admitted connection holds no goroutine: 200 of them add none.
func TestPolledIdleConnectionsHoldNoGoroutine(t *testing.T) {
	keys := make([]string, 200)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	h := newHarness(t, keystore.NewMemory(keys...), hub.Config{}, Config{})
	first := h.connect(keys[0], "192.0.2.1")
	h.waitLive(1)
	// The poller and the harness's acceptor run now; admissions' own
	// goroutines (h.connect's) end once the connection is watched.
	waitFor(t, 10*time.Second, "the first connection watched and idle", func() bool {
		cs := h.watched()
		return len(cs) == 1 && h.idle(cs[0])
	})
	base := runtime.NumGoroutine()
	peers := []*peer{first}
	for i := 1; i < len(keys); i++ {
		peers = append(peers, h.connect(keys[i], fmt.Sprintf("192.0.2.%d", i%250+1)))
	}
	h.waitLive(len(keys))
	waitFor(t, 10*time.Second, "every connection watched", func() bool { return len(h.watched()) == len(keys) })
	// Admission goroutines may still be returning: wait for the count to
	// settle at most a handful above the base, then check it is not one
	// per connection.
	n := 0
	waitFor(t, 10*time.Second, "admissions done", func() bool { n = runtime.NumGoroutine(); return n <= base+5 })
	t.Logf("goroutines: %d with one connection, %d with %d", base, n, len(keys))
	for _, c := range h.watched() {
		if !h.idle(c) {
			t.Errorf("connection %d busy while its client is silent", c.sess.ID)
		}
	}
	// They are alive: each answers.
	for i, p := range peers[:20] {
		p.write(text("ping"))
		p.expectText("heartbeat message")
		if i == 0 {
			h.hub.Dispatch([]byte(`{"recipients":["k0"],"data":0}`))
			p.expectText(`{"data":0}`)
		}
	}
	h.noRecoveredPanics()
}

// A frame that arrives a byte at a time is read whole, and so is a
// fragmented message whose fragments come in separate readiness events.
func TestPolledFrameByteByByte(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("good"), hub.Config{}, Config{})
	p := h.connect("good", "192.0.2.1")
	h.waitLive(1)
	c := h.only()
	waitFor(t, 10*time.Second, "idle", func() bool { return h.idle(c) })

	f := text("ping")
	p.write(f[:1])
	// The poller has handed the connection to a reader, which now waits
	// for the rest of the frame.
	waitFor(t, 10*time.Second, "a reader for the first byte", func() bool { return !h.idle(c) })
	for i := 1; i < len(f); i++ {
		p.write(f[i : i+1])
	}
	p.expectText("heartbeat message")
	waitFor(t, 10*time.Second, "idle again", func() bool { return h.idle(c) })

	// Fragments in separate events, a ping between them, "é" split across
	// them. A ping after each part is answered once the part is handled.
	parts := [][]byte{frame(ws.OpText, false, []byte("p\xc3")), frame(ws.OpContinuation, false, []byte("\xa9")),
		frame(ws.OpContinuation, true, []byte("x"))}
	for i, part := range parts {
		for j := range part {
			p.write(part[j : j+1])
		}
		ping := frame(ws.OpPing, true, []byte{byte('0' + i)})
		for j := range ping {
			p.write(ping[j : j+1])
		}
		hd, b, err := p.read(patience)
		if err != nil || hd.OpCode != ws.OpPong || string(b) != string(rune('0'+i)) {
			t.Fatalf("pong after part %d: %+v %q %v", i, hd, b, err)
		}
		waitFor(t, 10*time.Second, "idle between fragments", func() bool { return h.idle(c) })
		if assembling := c.frag != nil; assembling != (i < len(parts)-1) {
			t.Fatalf("after part %d: assembling a message = %v", i, assembling)
		}
	}
	// "pé x" is not "ping": no reply, and the connection stays.
	p.write(text("ping"))
	p.expectText("heartbeat message")
	if h.hub.Live() != 1 {
		t.Fatal("connection closed")
	}
	h.noRecoveredPanics()
}

// A silent connection ends at the idle timeout, as "idle".
func TestPolledIdleTimeout(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("good", "live"), hub.Config{}, Config{IdleTimeout: 100 * time.Millisecond})
	p := h.connect("good", "192.0.2.1")
	// Nothing is sent: the server drops it (its close frame may or may not
	// precede the end of the stream). No wait for it to be live or watched
	// first: a slow machine could let it live and end unseen in between.
	_ = p.c.SetReadDeadline(time.Now().Add(patience))
	if _, err := io.Copy(io.Discard, p.c); err != nil {
		t.Fatalf("waiting for the server to close: %v", err)
	}
	h.waitGone()
	h.expectOnlyDisconnect(t, metrics.DiscIdle)
	// A loopback TCP socket is the poller's to watch (it started for it).
	h.srv.pollOnce.Do(func() {}) // orders the poller's start before the read
	if h.srv.poll == nil {
		t.Fatal("no poller: the connection read on a goroutine of its own")
	}
	h.noRecoveredPanics()
}

// However the client ends the connection — close frame, EOF, reset — it
// is torn down once: one disconnect, the open count back to zero.
func TestPolledClientEndsOnce(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(p *peer)
	}{
		{"close frame", func(p *peer) {
			p.write(frame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")))
			p.expectClose(1000)
		}},
		{"EOF", func(p *peer) { _ = p.c.Close() }},
		{"half close", func(p *peer) { _ = p.c.(*net.TCPConn).CloseWrite() }},
		{"reset", func(p *peer) {
			_ = p.c.(*net.TCPConn).SetLinger(0)
			_ = p.c.Close()
		}},
		{"reset mid-frame", func(p *peer) {
			p.write(text("ping")[:3])
			_ = p.c.(*net.TCPConn).SetLinger(0)
			_ = p.c.Close()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, keystore.NewMemory("good"), hub.Config{}, Config{})
			p := h.connect("good", "192.0.2.1")
			h.waitLive(1)
			_ = h.only()
			tc.end(p)
			h.waitGone()
			h.expectOnlyDisconnect(t, metrics.DiscClient)
			if n := testutil.ToFloat64(h.m.Connections.WithLabelValues(Name)); n != 0 {
				t.Errorf("connections gauge = %v", n)
			}
			if n := len(h.watched()); n != 0 {
				t.Errorf("%d connections still watched", n)
			}
			if h.srv.Open() != 0 {
				t.Errorf("open = %d", h.srv.Open())
			}
			h.noRecoveredPanics()
		})
	}
}

// A write error on an idle watched connection (the writer closes its
// socket) ends it at once as "write_error", though nobody was reading it.
func TestPolledWriteErrorEndsIdleConnection(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("good"), hub.Config{}, Config{})
	h.connect("good", "192.0.2.1")
	h.waitLive(1)
	c := h.only()
	waitFor(t, 10*time.Second, "idle", func() bool { return h.idle(c) })
	c.wmu.Lock()
	c.fail()
	c.wmu.Unlock()
	h.waitGone()
	h.expectOnlyDisconnect(t, metrics.DiscWriteError)
	h.noRecoveredPanics()
}

// A client that never answers the server's close frame is dropped once the
// close wait has passed, though it is idle in the poller.
func TestPolledServerCloseWithoutReply(t *testing.T) {
	store := keystore.NewMemory("good")
	h := newHarness(t, store, hub.Config{RecheckInterval: 10 * time.Millisecond}, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.hub.Run(ctx)
	p := h.connect("good", "192.0.2.1")
	h.waitLive(1)
	_ = h.only()
	store.Remove("good")
	// Read the close frame but do not answer it.
	for {
		hd, _, err := p.read(patience)
		if err != nil {
			t.Fatalf("waiting for the close frame: %v", err)
		}
		if hd.OpCode == ws.OpClose {
			break
		}
	}
	h.waitGone()
	h.expectOnlyDisconnect(t, metrics.DiscRevoked)
}

// A panic on a poller goroutine closes that connection with 1011; the
// others keep being served.
func TestPolledPanicClosesWith1011(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("good", "bomb"), hub.Config{}, Config{})
	ok := h.connect("good", "192.0.2.1")
	h.waitLive(1)
	c := h.only()
	bad := h.connect("bomb", "192.0.2.2")
	h.waitLive(2)
	var bc *conn
	waitFor(t, 10*time.Second, "both watched and idle", func() bool {
		cs := h.watched()
		if len(cs) != 2 || !h.idle(cs[0]) || !h.idle(cs[1]) {
			return false
		}
		bc = cs[0]
		if bc == c {
			bc = cs[1]
		}
		return true
	})
	bc.rd = nil     // its next read panics
	_ = h.watched() // (the poller's lock orders the change before its reader)
	bad.write(text("ping"))
	bad.expectClose(1011)
	waitFor(t, 10*time.Second, "the failed connection closed", func() bool { return h.srv.Open() == 1 && h.hub.Live() == 1 })
	if logs := h.errs.all(); len(logs) != 1 || !strings.Contains(logs[0], "internal error") {
		t.Errorf("want one error line, got %q", logs)
	}
	if n := h.disconnects(metrics.DiscInternal); n != 1 {
		t.Errorf("disconnects{internal_error} = %v", n)
	}
	if n := len(h.watched()); n != 1 {
		t.Errorf("%d connections watched, want 1", n)
	}
	h.hub.Dispatch([]byte(`{"recipients":["good"],"data":1}`))
	ok.expectText(`{"data":1}`)
	ok.write(text("ping"))
	ok.expectText("heartbeat message")
}

// An interrupted wait (EINTR: the runtime's preemption signals arrive
// often) is no failure: the poller keeps watching.
func TestPolledInterruptedWaits(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("a", "b"), hub.Config{}, Config{})
	var calls, interrupted atomic.Int64
	h.srv.pollOnce.Do(func() {
		h.srv.poll = startPoller(h.srv.ctx, &h.srv.cfg, func(epfd int, events []unix.EpollEvent, msec int) (int, error) {
			if calls.Add(1)%2 == 0 {
				interrupted.Add(1)
				return -1, unix.EINTR // as unix.EpollWait returns it
			}
			return unix.EpollWait(epfd, events, msec)
		})
	})
	a := h.connect("a", "192.0.2.1")
	b := h.connect("b", "192.0.2.2")
	h.waitLive(2)
	for i := range 5 {
		waitFor(t, 10*time.Second, "more interrupted waits", func() bool {
			return interrupted.Load() > int64(2*i+2) || len(h.watched()) < 2
		})
		if n := len(h.watched()); n != 2 {
			t.Fatalf("after %d interrupted waits the poller watches %d connections, want 2", interrupted.Load(), n)
		}
		a.write(text("ping"))
		a.expectText("heartbeat message")
		b.write(frame(ws.OpPing, true, []byte{byte(i)}))
		if hd, _, err := b.read(patience); err != nil || hd.OpCode != ws.OpPong {
			t.Fatalf("pong: %+v %v", hd, err)
		}
	}
	waitFor(t, 10*time.Second, "both idle in the poller", func() bool {
		cs := h.watched()
		return len(cs) == 2 && h.idle(cs[0]) && h.idle(cs[1])
	})
	h.noRecoveredPanics()
}

// When the server's context ends the poller stops; the connections it
// watched are served on goroutines of their own until they end.
func TestPolledConnectionsOutliveThePoller(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("a", "b"), hub.Config{}, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.srv = NewServer(ctx, h.srv.cfg)
	a := h.connect("a", "192.0.2.1")
	b := h.connect("b", "192.0.2.2")
	h.waitLive(2)
	waitFor(t, 10*time.Second, "both watched", func() bool { return len(h.watched()) == 2 })
	ping := text("ping")
	b.write(ping[:3]) // a partial frame, being read when the poller stops
	cancel()
	waitFor(t, 10*time.Second, "the poller stopped", func() bool { return len(h.watched()) == 0 })
	a.write(ping)
	a.expectText("heartbeat message")
	b.write(ping[3:])
	b.expectText("heartbeat message")
	a.write(frame(ws.OpClose, true, nil))
	a.expectClose(1000)
	b.write(frame(ws.OpClose, true, nil))
	b.expectClose(1000)
	h.waitGone()
	h.noRecoveredPanics()
}

// newHostileHarness is a listening server with the fuzz targets' limits:
// short timeouts, small queues and frames, a strict client rate.
func newHostileHarness(tb testing.TB) (*harness, *keystore.Memory) {
	store := keystore.NewMemory()
	h := newHarness(tb, store, hub.Config{ClientRate: 1, ClientBurst: 8}, Config{
		IdleTimeout: time.Second, WriteTimeout: time.Second,
		QueueBytes: 1 << 10, MaxFrameBytes: fuzzMaxFrame,
	})
	h.listen()
	return h, store
}

// TestPolledHostileInputs runs FuzzReader's seeds through real loopback
// sockets on the poller path, whole and a byte per write.
func TestPolledHostileInputs(t *testing.T) {
	h, store := newHostileHarness(t)
	var seq atomic.Uint64
	for _, split := range []bool{false, true} {
		for i, in := range fuzzSeeds() {
			t.Run(fmt.Sprintf("split=%v/%d", split, i), func(t *testing.T) {
				pollOne(t, h, store, &seq, in, split)
			})
		}
	}
}

// FuzzPolledReader is FuzzReader on the poller path: arbitrary bytes from
// a real socket, then the client's end of the stream.
func FuzzPolledReader(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s, false)
	}
	h, store := newHostileHarness(f)
	var seq atomic.Uint64
	f.Fuzz(func(t *testing.T, in []byte, split bool) {
		if len(in) > fuzzMaxInput {
			in = in[:fuzzMaxInput]
		}
		pollOne(t, h, store, &seq, in, split)
	})
}

// pollOne sends in on a fresh watched connection (a byte per write when
// split), ends the stream, and checks that the connection ends, that the
// hub and the poller hold nothing afterwards, and that nothing panicked.
func pollOne(t *testing.T, h *harness, store *keystore.Memory, seq *atomic.Uint64, in []byte, split bool) {
	key := fmt.Sprintf("k%d", seq.Add(1))
	store.Add(key)
	defer store.Remove(key)
	logged := h.errs.count()
	cli, srv := fuzzPair(t, h)
	h.srv.start(srv, session.Peer{Key: key, Addr: "192.0.2.1"})
	drained := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, cli); close(drained) }()
	if split {
		for i := range in {
			if _, err := cli.Write(in[i : i+1]); err != nil {
				break // the server ended it already
			}
		}
	} else {
		_, _ = cli.Write(in)
	}
	_ = cli.(*net.TCPConn).CloseWrite()
	select {
	case <-drained:
	case <-time.After(patience):
		t.Fatalf("connection still open %v after the input ended (open %d, live %d)", patience, h.srv.Open(), h.hub.Live())
	}
	deadline := time.Now().Add(patience)
	for h.srv.Open() != 0 || h.hub.Live() != 0 || len(h.watched()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("after the connection ended: open %d, live %d, watched %d", h.srv.Open(), h.hub.Live(), len(h.watched()))
		}
		time.Sleep(50 * time.Microsecond)
	}
	if lines, stacks := h.errs.from(logged); len(lines) > 0 {
		t.Fatalf("a connection goroutine panicked: %s\n%s", lines[0], stacks[0])
	}
	if n := h.disconnects(metrics.DiscInternal); n != 0 {
		t.Fatalf("disconnects{internal_error} = %v", n)
	}
}

// fuzzPair is h.tcpPair for t (a fuzz target may not use its F's helpers).
func fuzzPair(t *testing.T, h *harness) (client, server net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", h.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, ok := <-h.accept
	if !ok {
		t.Fatal("listener closed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// expectOnlyDisconnect checks that the one disconnect counted had reason.
func (h *harness) expectOnlyDisconnect(t *testing.T, reason string) {
	t.Helper()
	if n := h.disconnects(reason); n != 1 {
		t.Errorf("disconnects{%s} = %v", reason, n)
	}
	if n := h.allDisconnects(); n != 1 {
		t.Errorf("disconnects = %v, want 1", n)
	}
}
