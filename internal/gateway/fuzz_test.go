package gateway

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/config"
)

// panicWatch is a log handler that records what only a bug writes: an
// error-level line (a connection's goroutine recovered from a panic) or
// net/http's "http: panic serving" warning. Everything else is dropped.
type panicWatch struct {
	mu   sync.Mutex
	seen []string
}

func (p *panicWatch) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (p *panicWatch) Handle(_ context.Context, r slog.Record) error {
	if r.Level < slog.LevelError && !strings.Contains(r.Message, "panic") {
		return nil
	}
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	p.mu.Lock()
	p.seen = append(p.seen, b.String())
	p.mu.Unlock()
	return nil
}

func (p *panicWatch) WithAttrs([]slog.Attr) slog.Handler { return p }
func (p *panicWatch) WithGroup(string) slog.Handler      { return p }

func (p *panicWatch) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.seen
	p.seen = nil
	return s
}

// runFuzzGateway runs a demo-mode gateway (embedded demo key, in-process
// broker) on 127.0.0.1:0 until the test ends. Its timeouts are short so
// that every request is answered quickly.
func runFuzzGateway(tb testing.TB, watch *panicWatch) string {
	tb.Helper()
	cfg, err := config.ParseServe([]string{"--listen", "127.0.0.1:0", "--poll-timeout", "50ms",
		"--idle-timeout", "2s", "--ping-interval", "1s", "--shutdown-timeout", "2s"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		tb.Fatal(err)
	}
	g, err := New(cfg, Options{Logger: slog.New(watch)})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("gateway Run: %v", err)
			}
		case <-time.After(time.Minute):
			tb.Errorf("gateway did not stop")
		}
	})
	return g.Addr().String()
}

// FuzzClientHTTP sends arbitrary bytes — request line, headers (transport
// selectors, upgrade, forwarding, sizes), query (key, sid) and body — to
// the client endpoint over a real loopback socket. Whatever they are, the
// gateway must not panic (not even a recovered one: that is a bug reached
// by input, logged at error level) and must still answer /healthz.
func FuzzClientHTTP(f *testing.F) {
	key := config.DemoKey
	crlf := func(lines ...string) []byte { return []byte(strings.Join(lines, "\r\n")) }
	for _, seed := range [][]byte{
		// A poll (bullet.js), with and without sid.
		crlf("GET /websocket?"+key+"&sid=tab-1&_=1416911718123 HTTP/1.1", "Host: 127.0.0.1", "X-Socket-Transport: xhrPolling", "", ""),
		crlf("GET /websocket?key="+key+" HTTP/1.1", "Host: localhost", "X-Socket-Transport: xhrPolling", "User-Agent: Mozilla/5.0", "", ""),
		// An EventSource stream.
		crlf("GET /websocket?"+key+"&sid=es HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream", "Last-Event-ID: 3", "", ""),
		// Client text by POST, form-encoded and chunked.
		crlf("POST /websocket?"+key+"&sid=tab-1 HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/x-www-form-urlencoded; charset=utf-8", "Content-Length: 4", "", "ping"),
		crlf("POST /websocket?"+key+" HTTP/1.1", "Host: 127.0.0.1", "Transfer-Encoding: chunked", "", "5", "hello", "0", "", ""),
		// A WebSocket upgrade, then a masked "ping" text frame.
		append(crlf("GET /websocket?"+key+" HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13", "", ""),
			0x81, 0x84, 1, 2, 3, 4, 'p'^1, 'i'^2, 'n'^3, 'g'^4),
		// An upgrade whose head is too big for the raw path's 4 KB peek:
		// net/http reads it and hands it to the WebSocket transport.
		crlf("GET /websocket?"+key+" HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13", "X-Pad: "+strings.Repeat("p", 5000), "", ""),
		// Forwarded addresses, a long sid, a wrong key, a bad host, a preflight.
		crlf("GET /websocket?nope&sid="+strings.Repeat("x", 65)+" HTTP/1.1", "Host: 127.0.0.1", "X-Forwarded-For: 1.2.3.4, 10.0.0.1", "X-Real-IP: ::1", "X-Socket-Transport: xhrPolling", "", ""),
		crlf("GET /websocket?key=a%2Bb&sid=%ff HTTP/1.1", "Host: evil.example", "Origin: http://evil.example", "Accept: text/event-stream", "", ""),
		crlf("OPTIONS /websocket HTTP/1.1", "Host: 127.0.0.1", "Origin: http://page.example", "Access-Control-Request-Method: GET", "", ""),
		crlf("POST /publish HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", "Content-Length: 1000", "", "{"),
		// Garbage.
		[]byte("\x00\xff\r\n\r\n"),
		[]byte("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + strings.Repeat("a", 300) + "\r\n\r\n"),
		[]byte("GET /websocket?" + key + "\r\n\r\n"),
	} {
		f.Add(seed)
	}
	watch := &panicWatch{}
	addr := runFuzzGateway(f, watch)
	// Long bounds for what must succeed (only a hang takes a minute); the
	// 80 ms read below only limits what is logged of the answer.
	health := &http.Client{Timeout: time.Minute}
	f.Fuzz(func(t *testing.T, req []byte) {
		c, err := net.DialTimeout("tcp", addr, time.Minute)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		_ = c.SetDeadline(time.Now().Add(80 * time.Millisecond))
		_, _ = c.Write(req) // the server may close first: not an error
		if !bytes.Contains(req, []byte("\n\r\n")) && !bytes.Contains(req, []byte("\n\n")) {
			// No complete head: say so at once rather than wait for the
			// deadline (a complete one keeps the connection open, so
			// held polls and streams are not cut by the end of input).
			_ = c.(*net.TCPConn).CloseWrite()
		}
		head := readHead(c)
		_ = c.Close()
		first, _, _ := bytes.Cut(head, []byte("\r\n"))
		t.Logf("answer: %q", first)
		if seen := watch.take(); len(seen) > 0 {
			t.Fatalf("input %q reached a panic:\n%s", req, strings.Join(seen, "\n"))
		}
		resp, err := health.Get("http://" + addr + "/healthz")
		if err != nil {
			t.Fatalf("after %q: /healthz: %v", req, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("after %q: /healthz answered %d", req, resp.StatusCode)
		}
	})
}

// readHead reads until the end of a response head, an error or the
// connection's deadline, whichever comes first, and returns what it read.
func readHead(c net.Conn) []byte {
	br := bufio.NewReaderSize(c, 4096)
	var head []byte
	for len(head) < 64<<10 {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err != nil || bytes.HasSuffix(head, []byte("\r\n\r\n")) {
			break
		}
	}
	return head
}
