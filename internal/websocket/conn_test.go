package websocket

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// These tests drive the WebSocket transport on an in-memory hub, without
// any HTTP: the server side of a loopback TCP pair (or a net.Pipe) goes
// straight to Server.start, as after a handshake.

// errorLog records error-level log lines: every recovered panic logs one.
type errorLog struct {
	mu     sync.Mutex
	lines  []string
	stacks []string
}

func (l *errorLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelError }

func (l *errorLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	stack := ""
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "stack" {
			stack = a.Value.String()
		} else {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		}
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.stacks = append(l.stacks, stack)
	l.mu.Unlock()
	return nil
}

func (l *errorLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *errorLog) WithGroup(string) slog.Handler      { return l }

func (l *errorLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// harness is a WebSocket server on an in-memory hub.
type harness struct {
	t      testing.TB
	srv    *Server
	hub    *hub.Hub
	m      *metrics.Metrics
	errs   *errorLog
	ln     net.Listener
	accept chan net.Conn
}

// newHarness builds a hub on store (hc's Store, Metrics and Logger are
// filled in) and a WebSocket server on it (wc's Hub, Metrics and Logger
// likewise).
func newHarness(t testing.TB, store keystore.KeyStore, hc hub.Config, wc Config) *harness {
	t.Helper()
	h := &harness{t: t, m: metrics.New(), errs: &errorLog{}}
	log := slog.New(h.errs)
	hc.Store, hc.Metrics, hc.Logger = store, h.m, log
	h.hub = hub.New(hc)
	wc.Hub, wc.Metrics, wc.Logger = h.hub, h.m, log
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h.srv = NewServer(ctx, wc)
	return h
}

// listen starts the loopback listener the TCP pairs come from.
func (h *harness) listen() {
	if h.ln != nil {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		h.t.Fatal(err)
	}
	h.ln, h.accept = ln, make(chan net.Conn)
	h.t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(h.accept)
				return
			}
			h.accept <- c
		}
	}()
}

// tcpPair returns both ends of a fresh loopback TCP connection.
func (h *harness) tcpPair() (client, server net.Conn) {
	h.t.Helper()
	h.listen()
	c, err := net.Dial("tcp", h.ln.Addr().String())
	if err != nil {
		h.t.Fatal(err)
	}
	s, ok := <-h.accept
	if !ok {
		h.t.Fatal("listener closed")
	}
	h.t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// connect admits a connection for key from addr over loopback TCP (the
// server's raw writev path) and returns the client side. Admission runs on
// its own goroutine, as the sniffer's would.
func (h *harness) connect(key, addr string) *peer {
	h.t.Helper()
	c, s := h.tcpPair()
	go h.srv.start(s, session.Peer{Key: key, Addr: addr})
	return &peer{t: h.t, c: c}
}

// connectPipe is connect over net.Pipe: every write the server makes
// blocks until the client reads it, so the test decides when the server's
// writes can complete.
func (h *harness) connectPipe(key, addr string) *peer {
	h.t.Helper()
	c, s := net.Pipe()
	h.t.Cleanup(func() { c.Close(); s.Close() })
	go h.srv.start(s, session.Peer{Key: key, Addr: addr})
	return &peer{t: h.t, c: c}
}

// waitGone waits until no connection is open or registered.
func (h *harness) waitGone() {
	h.t.Helper()
	waitFor(h.t, 10*time.Second, "every connection closed and unregistered", func() bool {
		return h.srv.Open() == 0 && h.hub.Live() == 0
	})
}

func (h *harness) waitLive(n int) {
	h.t.Helper()
	waitFor(h.t, 10*time.Second, fmt.Sprintf("%d live sessions", n), func() bool { return h.hub.Live() == n })
}

func (h *harness) disconnects(reason string) float64 {
	return testutil.ToFloat64(h.m.Disconnects.WithLabelValues(reason))
}

func (h *harness) rejections(reason string) float64 {
	return testutil.ToFloat64(h.m.Rejections.WithLabelValues(reason))
}

// noRecoveredPanics fails the test if any connection goroutine panicked.
func (h *harness) noRecoveredPanics() {
	h.t.Helper()
	if n := h.disconnects(metrics.DiscInternal); n != 0 {
		h.t.Errorf("disconnects{internal_error} = %v", n)
	}
	for _, l := range h.errs.all() {
		h.t.Errorf("error logged: %s", l)
	}
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// peer is the client side of a connection.
type peer struct {
	t testing.TB
	c net.Conn
}

func (p *peer) write(frames ...[]byte) {
	p.t.Helper()
	if _, err := p.c.Write(bytes.Join(frames, nil)); err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

// read returns the next frame the server sent.
func (p *peer) read(timeout time.Duration) (ws.Header, []byte, error) {
	_ = p.c.SetReadDeadline(time.Now().Add(timeout))
	h, err := ws.ReadHeader(p.c)
	if err != nil {
		return h, nil, err
	}
	if h.Masked {
		return h, nil, errors.New("server frame is masked")
	}
	if h.Length > 1<<20 {
		return h, nil, fmt.Errorf("server frame of %d bytes", h.Length)
	}
	b := make([]byte, h.Length)
	_, err = io.ReadFull(p.c, b)
	return h, b, err
}

func (p *peer) expectText(want string) {
	p.t.Helper()
	for {
		h, b, err := p.read(5 * time.Second)
		if err != nil {
			p.t.Fatalf("waiting for %q: %v", want, err)
		}
		switch h.OpCode {
		case ws.OpPing, ws.OpPong:
			continue
		case ws.OpText:
			if string(b) != want {
				p.t.Fatalf("got %q, want %q", b, want)
			}
			return
		default:
			p.t.Fatalf("waiting for %q: got %v frame %q", want, h.OpCode, b)
		}
	}
}

// expectClose reads until the server's close frame (text and control
// frames before it are allowed), checks its code, answers it, closes the
// socket and returns the reason.
func (p *peer) expectClose(code int) string {
	p.t.Helper()
	for {
		h, b, err := p.read(10 * time.Second)
		if err != nil {
			p.t.Fatalf("waiting for close %d: %v", code, err)
		}
		if h.OpCode != ws.OpClose {
			continue
		}
		got, reason := ws.ParseCloseFrameData(b)
		if int(got) != code {
			p.t.Fatalf("closed with %d %q, want %d", got, reason, code)
		}
		_, _ = p.c.Write(frame(ws.OpClose, true, ws.NewCloseFrameBody(got, "")))
		_ = p.c.Close()
		return reason
	}
}

// hdr builds a masked client frame header declaring length (which may
// differ from what follows it).
func hdr(op ws.OpCode, fin bool, length int64) []byte {
	var b bytes.Buffer
	_ = ws.WriteHeader(&b, ws.Header{Fin: fin, OpCode: op, Length: length, Masked: true, Mask: [4]byte{1, 2, 3, 4}})
	return b.Bytes()
}

// rawFrame encodes h (its Length set from payload) followed by payload,
// masked with h.Mask when h.Masked.
func rawFrame(h ws.Header, payload []byte) []byte {
	h.Length = int64(len(payload))
	var b bytes.Buffer
	_ = ws.WriteHeader(&b, h)
	p := append([]byte(nil), payload...)
	if h.Masked {
		ws.Cipher(p, h.Mask, 0)
	}
	return append(b.Bytes(), p...)
}

// frame encodes one masked client frame.
func frame(op ws.OpCode, fin bool, payload []byte) []byte {
	return rawFrame(ws.Header{Fin: fin, OpCode: op, Masked: true, Mask: [4]byte{0x5a, 0x11, 0xc3, 0x7e}}, payload)
}

func text(s string) []byte { return frame(ws.OpText, true, []byte(s)) }

// hugeLengthHeader is a 64-bit length header with its most significant bit
// set, which RFC 6455 forbids.
func hugeLengthHeader(op ws.OpCode) []byte {
	b := []byte{0x80 | byte(op), 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}
	binary.BigEndian.PutUint64(b[2:10], 1<<63)
	return b
}

func TestConnAdmitDeliverHeartbeatPongAndClose(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("good"), hub.Config{}, Config{})
	p := h.connect("good", "192.0.2.1")
	h.waitLive(1)

	h.hub.Dispatch([]byte(`{"recipients":["good"],"data":{"n":1}}`))
	p.expectText(`{"data":{"n":1}}`)
	h.hub.Dispatch([]byte(`{"broadcast":true,"data":"all"}`))
	p.expectText(`{"data":"all"}`)

	p.write(text("ping"))
	p.expectText("heartbeat message")

	p.write(frame(ws.OpPing, true, []byte("hi")))
	hd, b, err := p.read(5 * time.Second)
	if err != nil || hd.OpCode != ws.OpPong || string(b) != "hi" {
		t.Fatalf("pong: %+v %q %v", hd, b, err)
	}

	// A fragmented message with a ping between its fragments.
	p.write(frame(ws.OpText, false, []byte("pi")), frame(ws.OpPing, true, []byte("mid")), frame(ws.OpContinuation, true, []byte("ng")))
	hd, b, err = p.read(5 * time.Second)
	if err != nil || hd.OpCode != ws.OpPong || string(b) != "mid" {
		t.Fatalf("pong inside a fragmented message: %+v %q %v", hd, b, err)
	}
	p.expectText("heartbeat message")

	// The client closes: its code is echoed, the session leaves as "client".
	p.write(frame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")))
	p.expectClose(1000)
	h.waitGone()
	if n := h.disconnects(metrics.DiscClient); n != 1 {
		t.Errorf("disconnects{client} = %v", n)
	}
	h.noRecoveredPanics()
}

// A client that pings without reading is owed one pong, the latest ping's
// (RFC 6455 §5.5.3), not one per ping.
func TestConnPongOnlyForLatestPing(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("good"), hub.Config{}, Config{WriteTimeout: time.Minute})
	// Over net.Pipe no server write completes before the client reads, so
	// while the pings arrive at most one pong can be on its way (taken by
	// a write that is waiting for the reader) and one more can be pending.
	p := h.connectPipe("good", "192.0.2.1")
	h.waitLive(1)
	var frames [][]byte
	for i := range 10 {
		frames = append(frames, frame(ws.OpPing, true, fmt.Appendf(nil, "p%d", i)))
	}
	frames = append(frames, text("ping")) // its reply comes after every pong owed
	// net.Pipe: Write returns once the server's reader took every byte, so
	// every ping has been handled when it does.
	done := make(chan error, 1)
	go func() { _, err := p.c.Write(bytes.Join(frames, nil)); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not read the pings")
	}
	var pongs []string
	for {
		hd, b, err := p.read(5 * time.Second)
		if err != nil {
			t.Fatalf("after pongs %q: %v", pongs, err)
		}
		if hd.OpCode == ws.OpPong {
			pongs = append(pongs, string(b))
			continue
		}
		if hd.OpCode == ws.OpText && string(b) == "heartbeat message" {
			break
		}
		t.Fatalf("unexpected %v frame %q", hd.OpCode, b)
	}
	t.Logf("pongs for 10 pings: %q", pongs)
	if len(pongs) == 0 || len(pongs) > 2 || pongs[len(pongs)-1] != "p9" {
		t.Fatalf("pongs %q: want at most 2, the last for the last ping (p9)", pongs)
	}
	h.noRecoveredPanics()
}

// TestConnCloseCodes: each kind of bad client input ends the connection
// with its close code and disconnect reason, and nothing else.
func TestConnCloseCodes(t *testing.T) {
	const max = 256
	chars := strings.Repeat("x", max)
	huge := int64(math.MaxInt64)
	cases := []struct {
		name   string
		frames [][]byte
		code   int
		reason string // disconnect reason
	}{
		{"single frame one byte over", [][]byte{text(chars + "y")}, 1009, metrics.DiscTooBig},
		{"fragments one byte over", [][]byte{frame(ws.OpText, false, []byte(chars[:100])), frame(ws.OpContinuation, true, []byte(chars[:max-99]))}, 1009, metrics.DiscTooBig},
		{"fragment then 2^63-1", [][]byte{frame(ws.OpText, false, []byte("a")), hdr(ws.OpContinuation, true, huge)}, 1009, metrics.DiscTooBig},
		{"first frame 2^63-1", [][]byte{hdr(ws.OpText, true, huge)}, 1009, metrics.DiscTooBig},
		{"binary 65536", [][]byte{hdr(ws.OpBinary, true, 65536)}, 1009, metrics.DiscTooBig},
		{"length MSB set", [][]byte{hugeLengthHeader(ws.OpText)}, 1002, metrics.DiscProtocol},
		{"continuation without a message", [][]byte{frame(ws.OpContinuation, true, []byte("x"))}, 1002, metrics.DiscProtocol},
		{"text inside a fragmented message", [][]byte{frame(ws.OpText, false, []byte("a")), frame(ws.OpText, true, []byte("b"))}, 1002, metrics.DiscProtocol},
		{"binary inside a fragmented message", [][]byte{frame(ws.OpText, false, []byte("a")), frame(ws.OpBinary, true, []byte("b"))}, 1002, metrics.DiscProtocol},
		{"rsv1", [][]byte{rawFrame(ws.Header{Fin: true, OpCode: ws.OpText, Rsv: ws.Rsv(true, false, false), Masked: true}, []byte("ping"))}, 1002, metrics.DiscProtocol},
		{"rsv3", [][]byte{rawFrame(ws.Header{Fin: true, OpCode: ws.OpPing, Rsv: ws.Rsv(false, false, true), Masked: true}, nil)}, 1002, metrics.DiscProtocol},
		{"unmasked", [][]byte{rawFrame(ws.Header{Fin: true, OpCode: ws.OpText}, []byte("ping"))}, 1002, metrics.DiscProtocol},
		{"ping of 126 bytes", [][]byte{frame(ws.OpPing, true, bytes.Repeat([]byte("p"), 126))}, 1002, metrics.DiscProtocol},
		{"close of 126 bytes", [][]byte{frame(ws.OpClose, true, bytes.Repeat([]byte("c"), 126))}, 1002, metrics.DiscProtocol},
		{"ping declaring 2^63-1", [][]byte{hdr(ws.OpPing, true, huge)}, 1002, metrics.DiscProtocol},
		{"fragmented ping", [][]byte{frame(ws.OpPing, false, []byte("a"))}, 1002, metrics.DiscProtocol},
		{"reserved opcode 3", [][]byte{frame(ws.OpCode(3), true, []byte("x"))}, 1002, metrics.DiscProtocol},
		{"reserved control opcode 0xB", [][]byte{frame(ws.OpCode(0xB), true, []byte("x"))}, 1002, metrics.DiscProtocol},
		{"invalid UTF-8", [][]byte{text("a\xffb")}, 1007, metrics.DiscInvalidData},
		{"invalid UTF-8 across fragments", [][]byte{frame(ws.OpText, false, []byte("\xc3")), frame(ws.OpContinuation, true, []byte("("))}, 1007, metrics.DiscInvalidData},
		{"binary not UTF-8", [][]byte{frame(ws.OpBinary, true, []byte{0xff, 0xfe})}, 1007, metrics.DiscInvalidData},
		{"rate limited", [][]byte{text("ping"), text("ping"), text("ping"), text("ping")}, 4029, metrics.DiscRateLimited},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, keystore.NewMemory("good"), hub.Config{ClientRate: 0.001, ClientBurst: 3}, Config{MaxFrameBytes: max})
			p := h.connect("good", "192.0.2.1")
			h.waitLive(1)
			p.write(tc.frames...)
			reason := p.expectClose(tc.code)
			h.waitGone()
			if n := h.disconnects(tc.reason); n != 1 {
				t.Errorf("close %d %q: disconnects{%s} = %v", tc.code, reason, tc.reason, n)
			}
			h.noRecoveredPanics()
		})
	}
}

// TestConnSizeBoundaries: a message of exactly the limit, whole or in
// fragments (with control frames between them), is accepted.
func TestConnSizeBoundaries(t *testing.T) {
	const max = 256
	chars := strings.Repeat("x", max)
	h := newHarness(t, keystore.NewMemory("good"), hub.Config{}, Config{MaxFrameBytes: max})
	p := h.connect("good", "192.0.2.1")
	h.waitLive(1)
	// "é" split across fragments is valid UTF-8 once assembled.
	p.write(frame(ws.OpText, false, []byte("\xc3")), frame(ws.OpContinuation, true, []byte("\xa9")))
	p.write(text(chars))
	p.write(frame(ws.OpText, false, []byte(chars[:1])), frame(ws.OpContinuation, false, []byte(chars[:max-2])),
		frame(ws.OpPing, true, bytes.Repeat([]byte("p"), 125)), frame(ws.OpContinuation, true, []byte(chars[:1])))
	p.write(frame(ws.OpBinary, false, nil), frame(ws.OpContinuation, false, nil), frame(ws.OpContinuation, true, []byte(chars)))
	p.write(text("ping"))
	p.expectText("heartbeat message") // skips the pong
	if h.hub.Live() != 1 {
		t.Fatal("connection closed after messages within the limit")
	}
	h.noRecoveredPanics()
}

func TestConnUnknownKeyIs4401AndThrottledIs4429(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("good"), hub.Config{AuthFailBurst: 2}, Config{})
	for _, key := range []string{"bad-1", ""} {
		p := h.connect(key, "192.0.2.7")
		p.expectClose(4401)
	}
	if n := h.rejections(metrics.RejectUnauthorized); n != 2 {
		t.Errorf("rejections{unauthorized} = %v", n)
	}
	// The address spent its failed key checks: even a good key waits.
	p := h.connect("good", "192.0.2.7")
	p.expectClose(4429)
	if n := h.rejections(metrics.RejectThrottled); n != 1 {
		t.Errorf("rejections{throttled} = %v", n)
	}
	// Another address is not affected.
	p = h.connect("good", "192.0.2.8")
	h.waitLive(1)
	p.write(text("ping"))
	p.expectText("heartbeat message")
	h.noRecoveredPanics()
}

func TestConnRevokedKeyIs4403(t *testing.T) {
	store := keystore.NewMemory("good")
	h := newHarness(t, store, hub.Config{RecheckInterval: 10 * time.Millisecond}, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.hub.Run(ctx)
	p := h.connect("good", "192.0.2.1")
	h.waitLive(1)
	store.Remove("good")
	p.expectClose(4403)
	h.waitGone()
	if n := h.disconnects(metrics.DiscRevoked); n != 1 {
		t.Errorf("disconnects{revoked} = %v", n)
	}
}

func TestConnSessionCapIs4429(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("good"), hub.Config{MaxSessionsPerKey: 1}, Config{})
	a := h.connect("good", "192.0.2.1")
	h.waitLive(1)
	b := h.connect("good", "192.0.2.2")
	b.expectClose(4429)
	a.write(text("ping"))
	a.expectText("heartbeat message")
}

// panicStore panics when asked about one key.
type panicStore struct {
	*keystore.Memory
	bomb string
}

func (s panicStore) Contains(ctx context.Context, key string) (bool, error) {
	if key == s.bomb {
		panic("key store bug")
	}
	return s.Memory.Contains(ctx, key)
}

// A panic while admitting one connection closes it with 1011 and leaves
// the server serving others.
func TestConnPanicClosesWith1011(t *testing.T) {
	h := newHarness(t, panicStore{keystore.NewMemory("good"), "bomb"}, hub.Config{}, Config{})
	ok := h.connect("good", "192.0.2.1")
	h.waitLive(1)
	bad := h.connect("bomb", "192.0.2.2")
	bad.expectClose(1011)
	waitFor(t, 10*time.Second, "the failed connection closed", func() bool { return h.srv.Open() == 1 })
	if logs := h.errs.all(); len(logs) != 1 || !strings.Contains(logs[0], "internal error") || strings.Contains(logs[0], "bomb") {
		t.Errorf("want one error line with the key redacted, got %q", logs)
	}
	h.hub.Dispatch([]byte(`{"recipients":["good"],"data":1}`))
	ok.expectText(`{"data":1}`)
}
