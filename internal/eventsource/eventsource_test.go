package eventsource

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// parse reads one event from br as the HTML standard's EventSource parser
// does: lines end at CRLF, LF or CR; "data" fields are joined with LF; a
// blank line dispatches. It returns the event type ("message" unless an
// event field says otherwise), the data, and the comments seen on the way.
func parse(br *bufio.Reader) (typ, data string, comments []string, err error) {
	typ = "message"
	var lines []string
	hasData := false
	for {
		line, err := readLine(br)
		if err != nil {
			return "", "", comments, err
		}
		if line == "" {
			if hasData {
				return typ, strings.Join(lines, "\n"), comments, nil
			}
			typ = "message"
			continue
		}
		if c, ok := strings.CutPrefix(line, ":"); ok {
			comments = append(comments, strings.TrimPrefix(c, " "))
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "data":
			lines, hasData = append(lines, value), true
		case "event":
			typ = value
		}
	}
}

// readLine returns the next line without its end (CRLF, LF or CR).
func readLine(br *bufio.Reader) (string, error) {
	var b []byte
	for {
		c, err := br.ReadByte()
		if err != nil {
			return "", err
		}
		switch c {
		case '\n':
			return string(b), nil
		case '\r':
			if n, err := br.Peek(1); err == nil && n[0] == '\n' {
				_, _ = br.ReadByte()
			}
			return string(b), nil
		}
		b = append(b, c)
	}
}

// normalize is what a conforming parser makes of payload's line ends.
func normalize(p string) string {
	return strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(p)
}

func TestEncode(t *testing.T) {
	for payload, want := range map[string]string{
		``:                      "data: \n\n",
		`{"a":1}`:               "data: {\"a\":1}\n\n",
		"{\"a\":1,\n\"b\":2}":   "data: {\"a\":1,\ndata: \"b\":2}\n\n",
		"{\"a\":1,\r\"b\":2}":   "data: {\"a\":1,\ndata: \"b\":2}\n\n",
		"{\"a\":1,\r\n\"b\":2}": "data: {\"a\":1,\ndata: \"b\":2}\n\n",
		"a\n\nb":                "data: a\ndata: \ndata: b\n\n",
		"a\r\rb":                "data: a\ndata: \ndata: b\n\n",
		"a\n\rb":                "data: a\ndata: \ndata: b\n\n", // LF then CR: two line ends
		"a\r":                   "data: a\ndata: \n\n",
		"\r\n":                  "data: \ndata: \n\n",
	} {
		got := string(Encode([]byte(payload)))
		if got != want {
			t.Errorf("Encode(%q) = %q, want %q", payload, got, want)
		}
		if strings.ContainsRune(got, '\r') {
			t.Errorf("Encode(%q) left a CR in the stream: %q", payload, got)
		}
		typ, data, _, err := parse(bufio.NewReader(strings.NewReader(got)))
		if err != nil || typ != "message" || data != normalize(payload) {
			t.Errorf("Encode(%q) parses as %q %q %v, want %q", payload, typ, data, err, normalize(payload))
		}
	}
}

func FuzzEncodeRoundTrip(f *testing.F) {
	for _, s := range []string{"", "a", "{\"a\":1,\r\"b\":2}", "x\r\n\r\ny", "\n\r\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		got := Encode([]byte(payload))
		if bytes.IndexByte(got, '\r') >= 0 {
			t.Fatalf("CR in %q", got)
		}
		typ, data, _, err := parse(bufio.NewReader(bytes.NewReader(got)))
		if err != nil || typ != "message" || data != normalize(payload) {
			t.Fatalf("Encode(%q) = %q parses as %q %q %v", payload, got, typ, data, err)
		}
	})
}

// rig is the EventSource transport on an in-memory hub (key "k") served
// by httptest; the peer's key is the query's key.
type rig struct {
	hub *hub.Hub
	m   *metrics.Metrics
	es  *Server
	srv *httptest.Server
}

func newRig(t *testing.T) *rig {
	t.Helper()
	return newRigWith(t, keystore.NewMemory("k"), slog.New(slog.DiscardHandler))
}

// newRigWith is newRig with the key store and logger given.
func newRigWith(t *testing.T, store keystore.KeyStore, log *slog.Logger) *rig {
	t.Helper()
	m := metrics.New()
	h := hub.New(hub.Config{Store: store, Metrics: m, Logger: log, RecheckInterval: -1, MaxSessionsPerKey: 2})
	r := &rig{hub: h, m: m, es: NewServer(Config{Hub: h, Metrics: m, Logger: log, RetryAfterClose: 1500 * time.Millisecond})}
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !Wants(req) {
			http.Error(w, "not an event stream request", http.StatusBadRequest)
			return
		}
		r.es.Serve(w, req, session.Peer{Key: req.URL.Query().Get("key"), Addr: "192.0.2.1"})
	}))
	// As the gateway's server: request bodies must arrive within a read
	// timeout, which streams without one lift.
	r.srv.Config.ReadTimeout = readTimeout
	r.srv.Start()
	t.Cleanup(func() {
		r.srv.CloseClientConnections()
		r.srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		h.Shutdown(ctx)
	})
	return r
}

const readTimeout = 300 * time.Millisecond

// patience is how long a test waits for something that must happen (an
// event, an admission, a close). Only a loss or a hang takes that long, so
// a slow or loaded machine is never failed for being slow.
const patience = time.Minute

type testStream struct {
	resp *http.Response
	br   *bufio.Reader
	raw  *bytes.Buffer // everything read, to check the framing
}

func (r *rig) open(t *testing.T, key string) *testStream {
	t.Helper()
	req, _ := http.NewRequest("GET", r.srv.URL+"/ws?key="+key, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := r.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("answer %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	raw := &bytes.Buffer{}
	return &testStream{resp: resp, br: bufio.NewReader(io.TeeReader(resp.Body, raw)), raw: raw}
}

// next returns the next event (within patience) and the comments before it.
func (s *testStream) next(t *testing.T) (typ, data string, comments []string) {
	t.Helper()
	timer := time.AfterFunc(patience, func() { s.resp.Body.Close() })
	defer timer.Stop()
	typ, data, comments, err := parse(s.br)
	if err != nil {
		t.Fatalf("reading the stream: %v (read so far %q)", err, s.raw.String())
	}
	return typ, data, comments
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStreamReceivesMessages(t *testing.T) {
	r := newRig(t)
	s := r.open(t, "k")
	eventually(t, "the stream admitted", func() bool { return r.hub.Live() == 1 && r.es.Open() == 1 })
	r.hub.Dispatch([]byte(`{"recipients":["k"],"data":{"n":1}}`))
	typ, data, comments := s.next(t)
	if typ != "message" || data != `{"data":{"n":1}}` {
		t.Fatalf("got %s %q", typ, data)
	}
	if len(comments) == 0 || comments[0] != "connected" {
		t.Errorf("no `: connected` comment first: %q", comments)
	}
	// A bare CR (JSON whitespace) does not cut the message.
	r.hub.Dispatch([]byte("{\"recipients\":[\"k\"],\"data\":{\"a\":1,\r\"b\":2}}"))
	if _, data, _ := s.next(t); data != "{\"data\":{\"a\":1,\n\"b\":2}}" || !json.Valid([]byte(data)) {
		t.Fatalf("bare CR: %q", data)
	}
	if bytes.IndexByte(s.raw.Bytes(), '\r') >= 0 {
		t.Fatalf("CR in the stream: %q", s.raw.String())
	}
	// Keep-alives are comments.
	r.hub.Sessions("k")[0].KeepAlive()
	r.hub.Dispatch([]byte(`{"recipients":["k"],"data":2}`))
	if _, data, comments := s.next(t); data != `{"data":2}` {
		t.Fatalf("after keep-alive: %q %q", data, comments)
	} else if !strings.Contains(s.raw.String(), ": keep-alive\n\n") {
		t.Fatalf("no keep-alive comment: %q", s.raw.String())
	}
	// The client goes away: the session leaves.
	s.resp.Body.Close()
	eventually(t, "the stream's session left", func() bool { return r.hub.Live() == 0 && r.es.Open() == 0 })
	if got := testutil.ToFloat64(r.m.Disconnects.WithLabelValues(metrics.DiscClient)); got != 1 {
		t.Fatalf("disconnects{client} = %v", got)
	}
}

func TestUnknownKeyGetsCloseEvent(t *testing.T) {
	r := newRig(t)
	s := r.open(t, "nope")
	typ, data, _ := s.next(t)
	if typ != "close" || data != `{"code":4401,"reason":"unauthorized"}` {
		t.Fatalf("got %s %q", typ, data)
	}
	// The exact framing: a retry hint, the event, then the stream ends.
	if rest, err := io.ReadAll(s.br); err != nil || len(rest) != 0 {
		t.Fatalf("after the close event: %q %v", rest, err)
	}
	if want := "retry: 1500\nevent: close\ndata: {\"code\":4401,\"reason\":\"unauthorized\"}\n\n"; s.raw.String() != want {
		t.Fatalf("stream %q, want %q", s.raw.String(), want)
	}
	if r.hub.Live() != 0 || r.es.Open() != 0 {
		t.Fatalf("live %d open %d", r.hub.Live(), r.es.Open())
	}
}

func TestSessionCapGetsCloseEvent(t *testing.T) {
	r := newRig(t) // at most 2 sessions of a key
	r.open(t, "k")
	r.open(t, "k")
	eventually(t, "two streams admitted", func() bool { return r.hub.Live() == 2 })
	typ, data, _ := r.open(t, "k").next(t)
	if typ != "close" || !strings.Contains(data, `"code":4429`) {
		t.Fatalf("third stream of the key: %s %q", typ, data)
	}
	var v struct {
		Code   int
		Reason string
	}
	if err := json.Unmarshal([]byte(data), &v); err != nil || v.Code != 4429 || v.Reason == "" {
		t.Fatalf("close data %q: %v", data, err)
	}
}

func TestServerCloseEndsStream(t *testing.T) {
	r := newRig(t)
	s := r.open(t, "k")
	eventually(t, "the stream admitted", func() bool { return r.hub.Live() == 1 })
	r.hub.Dispatch([]byte(`{"recipients":["k"],"data":1}`))
	r.hub.Sessions("k")[0].Close(session.CloseRevoked, "revoked")
	// What was queued before the close still goes out, then the close.
	if typ, data, _ := s.next(t); typ != "message" || data != `{"data":1}` {
		t.Fatalf("got %s %q", typ, data)
	}
	if typ, data, _ := s.next(t); typ != "close" || data != `{"code":4403,"reason":"revoked"}` {
		t.Fatalf("got %s %q", typ, data)
	}
	if _, err := io.ReadAll(s.br); err != nil {
		t.Fatalf("stream did not end cleanly: %v", err)
	}
	eventually(t, "the session left", func() bool { return r.hub.Live() == 0 && r.es.Open() == 0 })
	if got := testutil.ToFloat64(r.m.Disconnects.WithLabelValues(metrics.DiscRevoked)); got != 1 {
		t.Fatalf("disconnects{revoked} = %v", got)
	}
}

func TestWants(t *testing.T) {
	for _, c := range []struct {
		method, accept string
		want           bool
	}{
		{"GET", "text/event-stream", true},
		{"GET", "text/html, text/event-stream;q=0.9", true},
		{"POST", "text/event-stream", false},
		{"GET", "*/*", false},
	} {
		r := httptest.NewRequest(c.method, "/ws", nil)
		r.Header.Set("Accept", c.accept)
		if Wants(r) != c.want {
			t.Errorf("Wants(%s, Accept %q) = %v", c.method, c.accept, !c.want)
		}
	}
}

func TestStreamOutlivesReadTimeout(t *testing.T) {
	r := newRig(t)
	s := r.open(t, "k")
	eventually(t, "the stream admitted", func() bool { return r.hub.Live() == 1 })
	time.Sleep(2 * readTimeout)
	r.hub.Dispatch([]byte(`{"recipients":["k"],"data":1}`))
	if _, data, _ := s.next(t); data != `{"data":1}` {
		t.Fatalf("after the read timeout: %q", data)
	}
}

// A stream request declaring a body it never sends: net/http reads the
// body before the response starts, so the read timeout must stay, or the
// stream never starts and its socket is held as long as the client keeps
// it open. With the timeout, the body's read fails, which ends the
// request: the stream starts, then ends, and the socket is closed.
func TestStreamWithUnsentBodyIsNotHeld(t *testing.T) {
	r := newRig(t)
	c, err := net.Dial("tcp", r.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(patience))
	if _, err := io.WriteString(c, "GET /ws?key=k HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nContent-Length: 1000\r\n\r\nx"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("stream not started: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("stream held: %q %v", body, err)
	}
	if !strings.HasPrefix(string(body), ": connected\n\n") {
		t.Fatalf("stream %q", body)
	}
	eventually(t, "the stream's session left", func() bool { return r.hub.Live() == 0 && r.es.Open() == 0 })
}

// panicStore panics when asked about one key (a key store bug some
// client's key reaches).
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

// errorLines is a slog.Handler keeping the messages of error records.
type errorLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *errorLines) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelError }
func (l *errorLines) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, r.Message)
	return nil
}
func (l *errorLines) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *errorLines) WithGroup(string) slog.Handler      { return l }

func (l *errorLines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// A panic while admitting one stream ends that stream with a close event
// 1011, is logged once and counted, and the server goes on serving others.
func TestStreamPanicClosesWith1011(t *testing.T) {
	logs := &errorLines{}
	r := newRigWith(t, panicStore{keystore.NewMemory("k"), "bomb"}, slog.New(logs))
	ok := r.open(t, "k")
	eventually(t, "the good stream admitted", func() bool { return r.hub.Live() == 1 })
	bad := r.open(t, "bomb")
	if typ, data, _ := bad.next(t); typ != "close" || data != `{"code":1011,"reason":"internal error"}` {
		t.Fatalf("panicking admission: %s %q", typ, data)
	}
	if rest, err := io.ReadAll(bad.br); err != nil || len(rest) != 0 {
		t.Fatalf("after the close event: %q %v", rest, err)
	}
	eventually(t, "the failed stream gone", func() bool { return r.es.Open() == 1 })
	if got := testutil.ToFloat64(r.m.Rejections.WithLabelValues(metrics.RejectInternal)); got != 1 {
		t.Fatalf("rejections{internal_error} = %v, want 1", got)
	}
	if lines := logs.all(); len(lines) != 1 || !strings.Contains(lines[0], "internal error") {
		t.Fatalf("want one internal-error line, got %q", lines)
	}
	r.hub.Dispatch([]byte(`{"recipients":["k"],"data":1}`))
	if typ, data, _ := ok.next(t); typ != "message" || data != `{"data":1}` {
		t.Fatalf("the good stream after the panic: %s %q", typ, data)
	}
	if r.hub.Live() != 1 {
		t.Fatalf("live %d, want 1", r.hub.Live())
	}
}
