package websocket

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// fuzzMaxFrame is the server's --max-client-bytes in FuzzReader: small, so
// that inputs reach the limit's boundaries.
const fuzzMaxFrame = 200

// fuzzMaxInput bounds what one input sends: more than the server drains
// after closing (64 KiB) says nothing new.
const fuzzMaxInput = 32 << 10

// fuzzConn is the server's end of a connection whose client sent in and
// then shut its side down: reads come from in, then EOF; writes go to a
// net.Pipe the test drains.
type fuzzConn struct {
	net.Conn
	r io.Reader
}

func (c *fuzzConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// from returns the error lines logged since the first n.
func (l *errorLog) from(n int) (lines, stacks []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines[n:]...), append([]string(nil), l.stacks[n:]...)
}

func (l *errorLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// fuzzSeeds are byte streams a client could send after its handshake.
func fuzzSeeds() [][]byte {
	j := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	n := func(k int) []byte { return bytes.Repeat([]byte("n"), k) }
	huge := int64(math.MaxInt64)
	masked := func(h ws.Header, p []byte) []byte {
		h.Masked, h.Mask = true, [4]byte{9, 8, 7, 6}
		return rawFrame(h, p)
	}
	seeds := [][]byte{
		nil,
		{0x81},
		text("ping"),
		text(""),
		j(text("ping"), text("ping"), frame(ws.OpPing, true, []byte("x")), text("hello")),
		j(frame(ws.OpText, false, []byte("pi")), frame(ws.OpContinuation, true, []byte("ng"))),
		j(frame(ws.OpText, false, []byte("p")), frame(ws.OpPing, true, nil), frame(ws.OpPong, true, []byte("y")), frame(ws.OpContinuation, false, nil), frame(ws.OpContinuation, true, []byte("ing"))),
		j(frame(ws.OpBinary, false, n(100)), frame(ws.OpContinuation, true, n(100))),
		j(frame(ws.OpBinary, false, n(100)), frame(ws.OpContinuation, true, n(101))),
		// Lengths at each encoding boundary and at the limit.
		text(string(n(125))), text(string(n(126))), text(string(n(fuzzMaxFrame - 1))), text(string(n(fuzzMaxFrame))), text(string(n(fuzzMaxFrame + 1))),
		hdr(ws.OpText, true, 0), hdr(ws.OpText, true, 125), hdr(ws.OpText, true, 126), hdr(ws.OpText, true, 65535),
		hdr(ws.OpText, true, 65536), hdr(ws.OpBinary, true, huge),
		j(frame(ws.OpText, false, []byte("a")), hdr(ws.OpContinuation, true, huge)),
		j(frame(ws.OpText, false, []byte("a")), hdr(ws.OpContinuation, true, fuzzMaxFrame-1), n(fuzzMaxFrame-1)),
		hugeLengthHeader(ws.OpText), hugeLengthHeader(ws.OpContinuation),
		// Non-minimal length encodings.
		{0x81, 0x80 | 126, 0, 4, 1, 2, 3, 4, 'p' ^ 1, 'i' ^ 2, 'n' ^ 3, 'g' ^ 4},
		{0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4, 'p' ^ 1, 'i' ^ 2, 'n' ^ 3, 'g' ^ 4},
		// Control frames: sizes, fragmented, every opcode.
		frame(ws.OpPing, true, n(125)), frame(ws.OpPing, true, n(126)), frame(ws.OpPing, false, nil),
		frame(ws.OpPong, true, n(125)), hdr(ws.OpPing, true, huge), hdr(ws.OpPong, true, 65536),
		frame(ws.OpCode(3), true, nil), frame(ws.OpCode(7), true, n(3)), frame(ws.OpCode(0xB), true, nil), frame(ws.OpCode(0xF), true, n(2)),
		// Ordering errors.
		frame(ws.OpContinuation, true, []byte("x")),
		j(frame(ws.OpText, false, []byte("a")), frame(ws.OpText, true, []byte("b"))),
		j(frame(ws.OpText, false, []byte("a")), frame(ws.OpBinary, false, []byte("b"))),
		// RSV bits, masking.
		masked(ws.Header{Fin: true, OpCode: ws.OpText, Rsv: ws.Rsv(true, false, false)}, []byte("ping")),
		masked(ws.Header{Fin: true, OpCode: ws.OpPing, Rsv: ws.Rsv(false, true, true)}, nil),
		masked(ws.Header{Fin: false, OpCode: ws.OpContinuation, Rsv: 7}, nil),
		rawFrame(ws.Header{Fin: true, OpCode: ws.OpText}, []byte("ping")),
		// UTF-8.
		text("a\xffb"), text("\xed\xa0\x80"), text("é"),
		j(frame(ws.OpText, false, []byte("\xc3")), frame(ws.OpContinuation, true, []byte("\xa9"))),
		j(frame(ws.OpText, false, []byte("\xc3")), frame(ws.OpContinuation, true, []byte("("))),
		// Close frames: empty, short, reserved and invalid codes, bad reason.
		frame(ws.OpClose, true, nil), frame(ws.OpClose, true, []byte{3}),
		frame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")),
		frame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusNoStatusRcvd, "")),
		frame(ws.OpClose, true, ws.NewCloseFrameBody(ws.StatusAbnormalClosure, "")),
		frame(ws.OpClose, true, []byte{0, 0}), frame(ws.OpClose, true, []byte{0xff, 0xff, 0xff}),
		frame(ws.OpClose, true, ws.NewCloseFrameBody(4000, "\xff")),
		frame(ws.OpClose, true, n(125)), frame(ws.OpClose, false, nil),
		j(frame(ws.OpClose, true, nil), text("ping"), frame(ws.OpPing, true, nil)),
		j(frame(ws.OpText, false, []byte("a")), frame(ws.OpClose, true, nil)),
	}
	// More heartbeats than the burst allows.
	flood := make([][]byte, 12)
	for i := range flood {
		flood[i] = text("ping")
	}
	seeds = append(seeds, j(flood...))
	return seeds
}

// FuzzReader feeds arbitrary bytes, as the client side of an admitted
// connection, into the server's read loop on a real hub, and checks that
// no panic escapes (or is even recovered), that the connection ends, and
// that the hub holds no session afterwards.
func FuzzReader(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	store := keystore.NewMemory()
	h := newHarness(f, store, hub.Config{ClientRate: 1, ClientBurst: 8}, Config{
		IdleTimeout: time.Second, WriteTimeout: time.Second,
		QueueBytes: 1 << 10, MaxFrameBytes: fuzzMaxFrame,
	})
	var seq atomic.Uint64
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > fuzzMaxInput {
			in = in[:fuzzMaxInput]
		}
		// A fresh key per input: its own client-text rate bucket.
		key := fmt.Sprintf("k%d", seq.Add(1))
		store.Add(key)
		defer store.Remove(key)
		logged := h.errs.count()

		cli, srv := net.Pipe()
		defer cli.Close()
		drained := make(chan struct{})
		go func() { _, _ = io.Copy(io.Discard, cli); close(drained) }()
		h.srv.start(&fuzzConn{Conn: srv, r: bytes.NewReader(in)}, session.Peer{Key: key, Addr: "192.0.2.1"})

		select {
		case <-drained: // the server closed its end
		case <-time.After(patience):
			t.Fatalf("connection still open %v after the input ended (open %d, live %d)", patience, h.srv.Open(), h.hub.Live())
		}
		deadline := time.Now().Add(patience)
		for h.srv.Open() != 0 || h.hub.Live() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("after the connection ended: open %d, live %d", h.srv.Open(), h.hub.Live())
			}
			time.Sleep(50 * time.Microsecond)
		}
		if lines, stacks := h.errs.from(logged); len(lines) > 0 {
			t.Fatalf("a connection goroutine panicked: %s\n%s", lines[0], stacks[0])
		}
		if n := h.disconnects(metrics.DiscInternal); n != 0 {
			t.Fatalf("disconnects{internal_error} = %v", n)
		}
	})
}
