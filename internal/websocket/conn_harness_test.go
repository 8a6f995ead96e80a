package websocket

// These tests drive the WebSocket transport on an in-memory hub, without
// any HTTP: the server side of a loopback TCP pair (or a net.Pipe) goes
// straight to Server.start, as after a handshake.
//
// This file holds the harness: a server on an in-memory hub, raw client
// frames, and a peer that reads what the server writes.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
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

// patience is how long a test waits for something that must happen (a
// frame, a close, a count). Only a loss or a hang takes that long, so a
// slow or loaded machine (CI runs packages side by side under the race
// detector) is never failed for being slow.
const patience = time.Minute

// waitFor waits until cond holds. d is what a healthy machine needs; it
// gives up only after patience if that is longer.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	d = max(d, patience)
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
		h, b, err := p.read(patience)
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
		h, b, err := p.read(patience)
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
