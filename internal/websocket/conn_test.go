package websocket

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// wrappedConn hides its socket's descriptor: the connection reads on a
// goroutine of its own, the path of wrapped sockets, not the poller's.
type wrappedConn struct{ net.Conn }

// connectWrapped is connect on the goroutine path.
func (h *harness) connectWrapped(key, addr string) *peer {
	h.t.Helper()
	c, s := h.tcpPair()
	go h.srv.start(wrappedConn{s}, session.Peer{Key: key, Addr: addr})
	return &peer{t: h.t, c: c}
}

// bothPaths runs f on a connection the poller watches and on one with a
// reader goroutine of its own: the frame handling is the same.
func bothPaths(t *testing.T, f func(t *testing.T, connect func(h *harness, key, addr string) *peer)) {
	t.Run("polled", func(t *testing.T) { f(t, (*harness).connect) })
	t.Run("goroutine", func(t *testing.T) { f(t, (*harness).connectWrapped) })
}

func TestConnAdmitDeliverHeartbeatPongAndClose(t *testing.T) {
	bothPaths(t, testConnAdmitDeliverHeartbeatPongAndClose)
}

func testConnAdmitDeliverHeartbeatPongAndClose(t *testing.T, connect func(h *harness, key, addr string) *peer) {
	h := newHarness(t, keystore.NewMemory("good"), hub.Config{}, Config{})
	p := connect(h, "good", "192.0.2.1")
	h.waitLive(1)

	h.hub.Dispatch([]byte(`{"recipients":["good"],"data":{"n":1}}`))
	p.expectText(`{"data":{"n":1}}`)
	h.hub.Dispatch([]byte(`{"broadcast":true,"data":"all"}`))
	p.expectText(`{"data":"all"}`)

	p.write(text("ping"))
	p.expectText("heartbeat message")

	p.write(frame(ws.OpPing, true, []byte("hi")))
	hd, b, err := p.read(patience)
	if err != nil || hd.OpCode != ws.OpPong || string(b) != "hi" {
		t.Fatalf("pong: %+v %q %v", hd, b, err)
	}

	// A fragmented message with a ping between its fragments.
	p.write(frame(ws.OpText, false, []byte("pi")), frame(ws.OpPing, true, []byte("mid")), frame(ws.OpContinuation, true, []byte("ng")))
	hd, b, err = p.read(patience)
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
	case <-time.After(patience):
		t.Fatal("the server did not read the pings")
	}
	var pongs []string
	for {
		hd, b, err := p.read(patience)
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
	bothPaths(t, func(t *testing.T, connect func(h *harness, key, addr string) *peer) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				h := newHarness(t, keystore.NewMemory("good"), hub.Config{ClientRate: 0.001, ClientBurst: 3}, Config{MaxFrameBytes: max})
				p := connect(h, "good", "192.0.2.1")
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
	})
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

// TestConnFragmentCap: a message of maxFragments frames (control frames
// between them do not count) is accepted; one frame more, even empty,
// closes the connection with 1009.
func TestConnFragmentCap(t *testing.T) {
	bothPaths(t, func(t *testing.T, connect func(h *harness, key, addr string) *peer) {
		h := newHarness(t, keystore.NewMemory("good"), hub.Config{}, Config{})
		p := connect(h, "good", "192.0.2.1")
		h.waitLive(1)
		frames := [][]byte{frame(ws.OpText, false, []byte("pi")), frame(ws.OpPing, true, []byte("p"))}
		for range maxFragments - 2 {
			frames = append(frames, frame(ws.OpContinuation, false, nil))
		}
		p.write(append(frames, frame(ws.OpContinuation, true, []byte("ng")))...)
		p.expectText("heartbeat message") // skips the pong
		if h.hub.Live() != 1 {
			t.Fatalf("connection closed after a message of %d frames", maxFragments)
		}
		frames = [][]byte{frame(ws.OpText, false, []byte("pi"))}
		for range maxFragments {
			frames = append(frames, frame(ws.OpContinuation, false, nil))
		}
		p.write(frames...)
		if reason := p.expectClose(1009); reason != "too many fragments" {
			t.Errorf("close reason %q", reason)
		}
		h.waitGone()
		if n := h.disconnects(metrics.DiscTooBig); n != 1 {
			t.Errorf("disconnects{too_big} = %v", n)
		}
		h.noRecoveredPanics()
	})
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

// RFC 6455: once both close frames have crossed, the server closes the TCP
// connection, and clients (browsers, Node) wait for that before reporting
// the close. With CloseWait an hour long, a socket that the server closes
// at all here was closed because of the close reply, not by the bound.
func TestConnClosesTheSocketRightAfterTheCloseHandshake(t *testing.T) {
	store := keystore.NewMemory("good", "revoked")
	h := newHarness(t, store, hub.Config{RecheckInterval: 10 * time.Millisecond}, Config{CloseWait: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.hub.Run(ctx)
	// expectEOF answers the server's close frame (code), keeps its own end
	// open, and waits for the server to close the connection.
	expectEOF := func(p *peer, what string) {
		t.Helper()
		_ = p.c.SetReadDeadline(time.Now().Add(patience))
		if n, err := io.Copy(io.Discard, p.c); err != nil {
			t.Fatalf("%s: the server kept the socket open after the close handshake (%d more bytes): %v", what, n, err)
		}
	}
	answer := func(p *peer, code int) {
		t.Helper()
		for {
			hd, b, err := p.read(patience)
			if err != nil {
				t.Fatalf("waiting for close %d: %v", code, err)
			}
			if hd.OpCode != ws.OpClose {
				continue
			}
			if got, _ := ws.ParseCloseFrameData(b); int(got) != code {
				t.Fatalf("closed with %d, want %d", got, code)
			}
			p.write(frame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusCode(code), "")))
			return
		}
	}

	// Refused at admission: 4401, then the reply, then EOF.
	p := h.connect("unknown", "192.0.2.1")
	answer(p, 4401)
	expectEOF(p, "refused key")

	// Closed by the client: its close, the server's reply, then EOF.
	p = h.connect("good", "192.0.2.2")
	h.waitLive(1)
	p.write(frame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")))
	for {
		hd, _, err := p.read(patience)
		if err != nil {
			t.Fatalf("waiting for the close reply: %v", err)
		}
		if hd.OpCode == ws.OpClose {
			break
		}
	}
	expectEOF(p, "client close")

	// Closed by the server on a live (idle, polled) connection: 4403.
	p = h.connect("revoked", "192.0.2.3")
	h.waitLive(1)
	store.Remove("revoked")
	answer(p, 4403)
	expectEOF(p, "revoked key")
	h.waitGone()
	h.noRecoveredPanics()
}
