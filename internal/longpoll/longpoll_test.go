package longpoll

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
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

// rig is the polling transport on an in-memory hub (key "k"), served by
// httptest: the peer is the query's key and sid, as the gateway would
// establish them (sid "" stands for a client without one).
type rig struct {
	hub *hub.Hub
	m   *metrics.Metrics
	lp  *Server
	srv *httptest.Server
}

func newRig(t *testing.T, mod func(*Config)) *rig {
	t.Helper()
	return newRigWith(t, keystore.NewMemory("k"), slog.New(slog.DiscardHandler), mod)
}

// newRigWith is newRig with the key store and logger given.
func newRigWith(t *testing.T, store keystore.KeyStore, log *slog.Logger, mod func(*Config)) *rig {
	t.Helper()
	m := metrics.New()
	h := hub.New(hub.Config{Store: store, Metrics: m, Logger: log, RecheckInterval: -1})
	ctx, cancel := context.WithCancel(context.Background())
	// Polls are held for patience: one the test dispatches to must still be
	// held when it does, however slow the machine. Tests of empty answers
	// set a short PollTimeout of their own.
	cfg := Config{Hub: h, Metrics: m, Logger: log, PollTimeout: patience, IdleTimeout: time.Minute}
	if mod != nil {
		mod(&cfg)
	}
	r := &rig{hub: h, m: m, lp: NewServer(ctx, cfg)}
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !Wants(req) {
			http.Error(w, "not a poll", http.StatusBadRequest)
			return
		}
		q := req.URL.Query()
		peer := session.Peer{Key: q.Get("key"), Addr: "192.0.2.1", Client: "ua:test"}
		if sid := q.Get("sid"); sid != "" {
			peer.Client = "sid:" + sid
		}
		r.lp.Serve(w, req, peer)
	}))
	// As the gateway's server: request bodies must arrive within a read
	// timeout, which held polls without one lift.
	r.srv.Config.ReadTimeout = readTimeout
	r.srv.Start()
	t.Cleanup(func() {
		r.srv.CloseClientConnections()
		r.srv.Close()
		sctx, scancel := context.WithTimeout(context.Background(), time.Second)
		h.Shutdown(sctx)
		scancel()
		cancel()
	})
	return r
}

const readTimeout = 300 * time.Millisecond

type answer struct {
	code int
	body string
	hdr  http.Header
	err  error
}

// poll performs one poll of key/sid and returns its answer.
func (r *rig) poll(ctx context.Context, key, sid string) answer {
	req, _ := http.NewRequestWithContext(ctx, "GET", r.srv.URL+"/ws?key="+key+"&sid="+sid, nil)
	req.Header.Set(Header, "xhrPolling")
	resp, err := r.srv.Client().Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b), resp.Header, err}
}

// pollAsync starts a poll and returns where its answer will arrive.
func (r *rig) pollAsync(ctx context.Context, key, sid string) <-chan answer {
	ch := make(chan answer, 1)
	go func() { ch <- r.poll(ctx, key, sid) }()
	return ch
}

// patience is how long a test waits for something that must happen (an
// admission, an answer, an expiry). Only a loss or a hang takes that long,
// so a slow or loaded machine is never failed for being slow.
const patience = time.Minute

// eventually waits until cond holds. d is what a healthy machine needs; it
// gives up only after patience if that is longer.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	d = max(d, patience)
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func wait(t *testing.T, ch <-chan answer) answer {
	t.Helper()
	select {
	case a := <-ch:
		if a.err != nil {
			t.Fatalf("poll: %v", a.err)
		}
		return a
	case <-time.After(patience):
		t.Fatalf("poll not answered within %v", patience)
		return answer{}
	}
}

func TestPollReturnsDeliveredMessage(t *testing.T) {
	r := newRig(t, nil)
	ch := r.pollAsync(context.Background(), "k", "a")
	eventually(t, 5*time.Second, "the poll's session admitted", func() bool { return r.hub.Find("k", "sid:a") != nil })
	r.hub.Dispatch([]byte(`{"recipients":["k"],"data":{"n":1}}`))
	a := wait(t, ch)
	if a.code != 200 || a.body != `{"data":{"n":1}}` {
		t.Fatalf("held poll: %d %q", a.code, a.body)
	}
	if got := a.hdr.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control %q", got)
	}
	// Messages that arrive between polls wait, one per answer, in order.
	for i := range 3 {
		r.hub.Dispatch([]byte(`{"recipients":["k"],"data":` + strconv.Itoa(i) + `}`))
	}
	for i := range 3 {
		if a := r.poll(context.Background(), "k", "a"); a.code != 200 || a.body != `{"data":`+strconv.Itoa(i)+`}` {
			t.Fatalf("queued message %d: %d %q %v", i, a.code, a.body, a.err)
		}
	}
}

func TestEmptyPollIs200WithEmptyBody(t *testing.T) {
	r := newRig(t, func(c *Config) { c.PollTimeout = 50 * time.Millisecond })
	a := r.poll(context.Background(), "k", "a")
	if a.err != nil || a.code != 200 || a.body != "" {
		t.Fatalf("empty poll: %d %q %v (want 200, empty, never 204)", a.code, a.body, a.err)
	}
	if a.hdr.Get("Content-Length") != "0" {
		t.Errorf("Content-Length %q", a.hdr.Get("Content-Length"))
	}
	if r.lp.Open() != 1 || r.hub.Live() != 1 {
		t.Fatalf("after an empty poll: open %d live %d, want the connection kept", r.lp.Open(), r.hub.Live())
	}
}

func TestUnknownKeyIs401WithCloseCode(t *testing.T) {
	r := newRig(t, nil)
	for _, key := range []string{"nope", ""} {
		a := r.poll(context.Background(), key, "a")
		if a.err != nil || a.code != 401 || a.hdr.Get("X-Wspubsub-Close-Code") != "4401" || a.hdr.Get("X-Wspubsub-Close-Reason") == "" {
			t.Fatalf("key %q: %d %v %v", key, a.code, a.hdr, a.err)
		}
	}
	if r.lp.Open() != 0 || r.hub.Live() != 0 {
		t.Fatalf("a refused poll kept a connection: open %d live %d", r.lp.Open(), r.hub.Live())
	}
	if got := testutil.ToFloat64(r.m.Rejections.WithLabelValues(metrics.RejectUnauthorized)); got != 2 {
		t.Fatalf("rejections{unauthorized} = %v, want 2", got)
	}
}

func TestUnpolledSessionExpiresWithinSeconds(t *testing.T) {
	// The idle timeout is a minute: only the unpolled timeout can end the
	// abandoned connection within the test's bound.
	r := newRig(t, func(c *Config) { c.UnpolledTimeout = 200 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	ch := r.pollAsync(ctx, "k", "gone")
	eventually(t, 5*time.Second, "the poll's session admitted", func() bool { return r.hub.Find("k", "sid:gone") != nil })
	cancel() // the client goes away before the poll is answered
	<-ch
	start := time.Now()
	eventually(t, 10*time.Second, "the abandoned connection expired", func() bool { return r.lp.Open() == 0 && r.hub.Live() == 0 })
	t.Logf("abandoned connection gone %v after its poll ended (UnpolledTimeout 200ms)", time.Since(start).Round(time.Millisecond))
	if got := testutil.ToFloat64(r.m.Disconnects.WithLabelValues(metrics.DiscIdle)); got != 1 {
		t.Fatalf("disconnects{idle} = %v, want 1", got)
	}

	// A connection one of whose polls was answered is a real client: it
	// lives until the idle timeout, not the unpolled one.
	r2 := newRig(t, func(c *Config) { c.UnpolledTimeout = 100 * time.Millisecond; c.PollTimeout = 20 * time.Millisecond })
	if a := r2.poll(context.Background(), "k", "real"); a.code != 200 {
		t.Fatalf("poll %d %v", a.code, a.err)
	}
	time.Sleep(600 * time.Millisecond) // six unpolled timeouts, a hundredth of the idle one
	if r2.lp.Open() != 1 || r2.hub.Live() != 1 {
		t.Fatalf("answered connection expired early: open %d live %d", r2.lp.Open(), r2.hub.Live())
	}
}

func TestIdleConnectionExpires(t *testing.T) {
	r := newRig(t, func(c *Config) { c.PollTimeout = 20 * time.Millisecond; c.IdleTimeout = 200 * time.Millisecond })
	if a := r.poll(context.Background(), "k", "a"); a.code != 200 {
		t.Fatalf("poll %d %v", a.code, a.err)
	}
	eventually(t, 10*time.Second, "the idle connection expired", func() bool { return r.lp.Open() == 0 && r.hub.Live() == 0 })
	if got := testutil.ToFloat64(r.m.Disconnects.WithLabelValues(metrics.DiscIdle)); got != 1 {
		t.Fatalf("disconnects{idle} = %v, want 1", got)
	}
}

func TestSameClientSharesOneSession(t *testing.T) {
	r := newRig(t, func(c *Config) { c.PollTimeout = 30 * time.Millisecond })
	// Concurrent first polls of one client: one admission (past four held
	// at once, a poll is refused with 429, the connection left alone).
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if a := r.poll(context.Background(), "k", "tab1"); a.err != nil || (a.code != 200 && a.code != 429) {
				t.Errorf("poll %d %v", a.code, a.err)
			}
		})
	}
	wg.Wait()
	for range 3 {
		if a := r.poll(context.Background(), "k", "tab1"); a.code != 200 {
			t.Fatalf("poll %d %v", a.code, a.err)
		}
	}
	if got := testutil.ToFloat64(r.m.Connects.WithLabelValues(Name)); got != 1 {
		t.Fatalf("connects{polling} = %v after 11 polls of one client, want 1", got)
	}
	if r.lp.Open() != 1 || r.hub.Live() != 1 {
		t.Fatalf("open %d live %d, want 1", r.lp.Open(), r.hub.Live())
	}
	// Another client of the same key is another connection; so is a
	// client without sid (known by address and User-Agent).
	r.poll(context.Background(), "k", "tab2")
	r.poll(context.Background(), "k", "")
	if r.lp.Open() != 3 || r.hub.Live() != 3 {
		t.Fatalf("open %d live %d, want 3", r.lp.Open(), r.hub.Live())
	}
	// A message for the key reaches each connection once.
	r.hub.Dispatch([]byte(`{"recipients":["k","k"],"data":1}`))
	for _, sid := range []string{"tab1", "tab2", ""} {
		if a := r.poll(context.Background(), "k", sid); a.body != `{"data":1}` {
			t.Fatalf("sid %q: %d %q", sid, a.code, a.body)
		}
		if a := r.poll(context.Background(), "k", sid); a.body != "" {
			t.Fatalf("sid %q: second answer %q, want empty", sid, a.body)
		}
	}
}

func TestServerCloseAnswersWaitingPoll(t *testing.T) {
	r := newRig(t, nil)
	ch := r.pollAsync(context.Background(), "k", "a")
	var s *session.Session
	eventually(t, 5*time.Second, "the poll's session admitted", func() bool { s = r.hub.Find("k", "sid:a"); return s != nil })
	s.Close(session.CloseRevoked, "revoked")
	a := wait(t, ch)
	if a.code != 403 || a.hdr.Get("X-Wspubsub-Close-Code") != "4403" {
		t.Fatalf("revoked: %d %v", a.code, a.hdr)
	}
	eventually(t, 5*time.Second, "the closed connection left", func() bool { return r.hub.Live() == 0 })
	if got := testutil.ToFloat64(r.m.Disconnects.WithLabelValues(metrics.DiscRevoked)); got != 1 {
		t.Fatalf("disconnects{revoked} = %v, want 1", got)
	}
	// The client's next poll starts a new connection.
	r.hub.Dispatch([]byte(`{"recipients":["k"],"data":2}`)) // nobody to receive it
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	ch = r.pollAsync(ctx, "k", "a")
	eventually(t, 5*time.Second, "readmitted", func() bool { return r.hub.Live() == 1 })
	r.hub.Dispatch([]byte(`{"recipients":["k"],"data":3}`))
	if a := wait(t, ch); a.code != 200 || a.body != `{"data":3}` {
		t.Fatalf("after readmission: %d %q", a.code, a.body)
	}
}

func TestWriteClose(t *testing.T) {
	for code, want := range map[int]int{
		session.CloseUnauthorized: 401, session.CloseRevoked: 403, session.CloseTooMany: 429,
		session.CloseRateLimited: 429, session.CloseTryAgain: 503, session.CloseGoingAway: 503,
		session.CloseTooBig: 413, session.CloseInternal: 500, session.CloseTooSlow: 410,
	} {
		w := httptest.NewRecorder()
		WriteClose(w, code, "why")
		if w.Code != want || w.Header().Get("X-Wspubsub-Close-Code") != strconv.Itoa(code) ||
			w.Header().Get("X-Wspubsub-Close-Reason") != "why" || w.Body.String() != "why" {
			t.Errorf("WriteClose(%d): %d %v %q, want %d", code, w.Code, w.Header(), w.Body.String(), want)
		}
		retry := w.Header().Get("Retry-After") != ""
		if retry != (code == session.CloseTryAgain || code == session.CloseGoingAway) {
			t.Errorf("WriteClose(%d): Retry-After %q", code, w.Header().Get("Retry-After"))
		}
	}
}

func TestSessionCapAnswers429(t *testing.T) {
	m := metrics.New()
	h := hub.New(hub.Config{Store: keystore.NewMemory("k"), Metrics: m, Logger: slog.New(slog.DiscardHandler),
		RecheckInterval: -1, MaxSessionsPerKey: 2})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	lp := NewServer(ctx, Config{Hub: h, Metrics: m, Logger: slog.New(slog.DiscardHandler), PollTimeout: 10 * time.Millisecond})
	for i, want := range []int{200, 200, 429} {
		req := httptest.NewRequest("GET", "/ws", nil)
		req.Header.Set(Header, "xhrPolling")
		w := httptest.NewRecorder()
		lp.Serve(w, req, session.Peer{Key: "k", Addr: "192.0.2.1", Client: "sid:" + strconv.Itoa(i)})
		if w.Code != want {
			t.Fatalf("poll %d: %d, want %d", i, w.Code, want)
		}
		if want == 429 && w.Header().Get("X-Wspubsub-Close-Code") != "4429" {
			t.Fatalf("over the cap: %v", w.Header())
		}
	}
	if lp.Open() != 2 {
		t.Fatalf("open %d, want 2 (the refused poll is not kept)", lp.Open())
	}
}

func TestHeldPollOutlivesReadTimeout(t *testing.T) {
	// The poll is held for patience (the rig's), so it is still held
	// however late the dispatch comes; the request was read before its
	// session was admitted, so its read deadline has passed once the
	// sleep is over.
	r := newRig(t, nil)
	ch := r.pollAsync(context.Background(), "k", "a")
	eventually(t, 5*time.Second, "the poll's session admitted", func() bool { return r.hub.Find("k", "sid:a") != nil })
	time.Sleep(2 * readTimeout)
	r.hub.Dispatch([]byte(`{"recipients":["k"],"data":1}`))
	if a := wait(t, ch); a.code != 200 || a.body != `{"data":1}` {
		t.Fatalf("poll held past the read timeout: %d %q", a.code, a.body)
	}
	// An empty poll held past the read timeout is answered, not cut: on a
	// rig of its own, as nothing must arrive while it is held.
	r2 := newRig(t, func(c *Config) { c.PollTimeout = 3 * readTimeout })
	if a := r2.poll(context.Background(), "k", "a"); a.err != nil || a.code != 200 || a.body != "" {
		t.Fatalf("empty poll held past the read timeout: %d %q %v", a.code, a.body, a.err)
	}
}

// A poll declaring a body it never sends: net/http reads the body before
// answering, so the read timeout must stay, or the socket is held for as
// long as the client keeps it open.
func TestPollWithUnsentBodyIsNotHeld(t *testing.T) {
	r := newRig(t, func(c *Config) { c.PollTimeout = 50 * time.Millisecond })
	c, err := net.Dial("tcp", r.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(patience))
	if _, err := io.WriteString(c, "GET /ws?key=k&sid=b HTTP/1.1\r\nHost: x\r\nX-Socket-Transport: xhrPolling\r\nContent-Length: 1000\r\n\r\nx"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	resp.Body.Close()
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatalf("answered %d, then the connection was held: %v", resp.StatusCode, err)
	}
}

func TestHeldPollsPerConnectionAreBounded(t *testing.T) {
	r := newRig(t, func(c *Config) { c.PollTimeout = time.Minute })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range maxHeldPolls {
		r.pollAsync(ctx, "k", "s")
	}
	eventually(t, 10*time.Second, "the polls held", func() bool {
		r.lp.mu.Lock()
		defer r.lp.mu.Unlock()
		p := r.lp.by[identity(session.Peer{Key: "k", Client: "sid:s"})]
		return p != nil && p.active.Load() == maxHeldPolls
	})
	a := r.poll(context.Background(), "k", "s")
	if a.code != http.StatusTooManyRequests || a.hdr.Get("X-Wspubsub-Close-Code") != "4429" {
		t.Fatalf("poll over the bound: %d %q", a.code, a.hdr.Get("X-Wspubsub-Close-Code"))
	}
	if r.hub.Live() != 1 {
		t.Fatalf("live %d: the refusal must leave the connection alone", r.hub.Live())
	}
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

// A panic while admitting a polling connection answers its poll 500 with
// close code 1011, is logged once and counted, keeps no connection, and
// the server goes on serving others.
func TestPollPanicIs500With1011(t *testing.T) {
	logs := &errorLines{}
	r := newRigWith(t, panicStore{keystore.NewMemory("k"), "bomb"}, slog.New(logs), nil)
	held := r.pollAsync(context.Background(), "k", "good")
	eventually(t, 5*time.Second, "the good poll admitted", func() bool { return r.hub.Find("k", "sid:good") != nil })
	for i := range 2 { // the failed connection is not kept: a second poll is admitted anew, and fails alike
		a := r.poll(context.Background(), "bomb", "bad")
		if a.err != nil || a.code != http.StatusInternalServerError || a.hdr.Get("X-Wspubsub-Close-Code") != "1011" {
			t.Fatalf("poll %d of the panicking key: %d %v %v", i+1, a.code, a.hdr, a.err)
		}
	}
	if got := testutil.ToFloat64(r.m.Rejections.WithLabelValues(metrics.RejectInternal)); got != 2 {
		t.Fatalf("rejections{internal_error} = %v, want 2", got)
	}
	if lines := logs.all(); len(lines) != 2 || !strings.Contains(lines[0], "internal error") {
		t.Fatalf("want one internal-error line per poll, got %q", lines)
	}
	if r.lp.Open() != 1 || r.hub.Live() != 1 {
		t.Fatalf("open %d live %d, want only the good connection", r.lp.Open(), r.hub.Live())
	}
	r.hub.Dispatch([]byte(`{"recipients":["k"],"data":1}`))
	if a := wait(t, held); a.code != 200 || a.body != `{"data":1}` {
		t.Fatalf("the good poll after the panics: %d %q", a.code, a.body)
	}
}
