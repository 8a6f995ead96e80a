package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
)

// drainRig is a running gateway whose drain is paced by the test: each
// time the drain would wait for its ticker, paced receives and the drain
// waits for release (or its context: SkipDrain, the drain's bound).
type drainRig struct {
	t       *testing.T
	g       *Gateway
	addr    string
	cancel  context.CancelFunc
	done    chan error
	paced   chan struct{}
	release chan struct{}
}

// newDrainRig runs a gateway knowing keys; args are extra serve flags.
func newDrainRig(t *testing.T, args []string, keys ...string) *drainRig {
	t.Helper()
	// An hour-long drain: its own bound never ends it during the test.
	cfg, err := config.ParseServe(append([]string{"--listen", "127.0.0.1:0", "--drain-period", "1h",
		"--shutdown-timeout", "10s", "--poll-timeout", "20s"}, args...), func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(cfg, Options{Store: keystore.NewMemory(keys...), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	r := &drainRig{t: t, g: g, addr: g.Addr().String(), done: make(chan error, 1),
		paced: make(chan struct{}), release: make(chan struct{})}
	g.drainer.pace = func(ctx context.Context) error {
		select {
		case r.paced <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case <-r.release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- g.Run(ctx) }()
	t.Cleanup(func() {
		g.SkipDrain()
		cancel()
		r.wait()
	})
	for code, _ := r.get("/readyz"); code != http.StatusOK; code, _ = r.get("/readyz") {
		time.Sleep(5 * time.Millisecond)
	}
	return r
}

// wait waits for Run to return (generously bounded).
func (r *drainRig) wait() {
	select {
	case err := <-r.done:
		if err != nil {
			r.t.Errorf("Run: %v", err)
		}
		r.done <- nil // for a later wait
	case <-time.After(30 * time.Second):
		r.t.Fatal("gateway did not stop within 30s")
	}
}

// awaitPaced waits until the drain waits between two batches.
func (r *drainRig) awaitPaced() {
	r.t.Helper()
	select {
	case <-r.paced:
	case <-time.After(30 * time.Second):
		r.t.Fatal("drain never paced")
	}
}

func (r *drainRig) get(path string, header ...string) (int, string) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+r.addr+path, nil)
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	c := http.Client{Timeout: 25 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Wspubsub-Close-Code") + "|" + resp.Header.Get("Retry-After") + "|" + string(b)
}

func (r *drainRig) waitLive(n int) {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for r.g.hub.Live() != n {
		if time.Now().After(deadline) {
			r.t.Fatalf("live = %d, want %d", r.g.hub.Live(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dialWS opens a WebSocket for key.
func (r *drainRig) dialWS(key string) net.Conn {
	r.t.Helper()
	conn, br, _, err := ws.Dialer{Timeout: time.Minute}.Dial(context.Background(), "ws://"+r.addr+"/websocket?"+key)
	if err != nil {
		r.t.Fatalf("dial %s: %v", key, err)
	}
	r.t.Cleanup(func() { conn.Close() })
	if br != nil { // frames that came with the handshake's answer
		return &bufferedConn{Conn: conn, r: br}
	}
	return conn
}

// closeCode reads conn until its close frame and returns the code (-1: the
// connection ended without one).
func closeCode(conn net.Conn) int {
	_ = conn.SetReadDeadline(time.Now().Add(25 * time.Second))
	for {
		f, err := ws.ReadFrame(conn)
		if err != nil {
			return -1
		}
		if f.Header.OpCode == ws.OpClose {
			if f.Header.Masked {
				ws.Cipher(f.Payload, f.Header.Mask, 0)
			}
			code, _ := ws.ParseCloseFrameData(f.Payload)
			// Answered, as a client does: the gateway need not wait for it.
			_ = wsutil.WriteClientMessage(conn, ws.OpClose, ws.NewCloseFrameBody(code, ""))
			return int(code)
		}
	}
}

// openStream opens an EventSource stream for key and returns a reader
// past its first line.
func (r *drainRig) openStream(key, sid string) *bufio.Reader {
	r.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+r.addr+"/websocket?"+key+"&sid="+sid, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		r.t.Fatalf("EventSource: HTTP %d", resp.StatusCode)
	}
	return bufio.NewReader(resp.Body)
}

// streamClose reads a stream until its close event and returns the retry
// line before it and the event's data.
func streamClose(br *bufio.Reader) (retry, data string) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return retry, "stream ended without a close event: " + err.Error()
		}
		switch {
		case strings.HasPrefix(line, "retry: "):
			retry = strings.TrimSpace(line[len("retry: "):])
		case line == "event: close\n":
			d, _ := br.ReadString('\n')
			return retry, strings.TrimSpace(strings.TrimPrefix(d, "data: "))
		}
	}
}

// TestDrainFailsReadinessRefusesNewAndClosesWith1012: during a drain
// /readyz is 503 {"status":"draining"}, a new connection on every transport
// is told 1012 (WebSocket: upgraded, then closed with 1012; EventSource:
// event: close 1012; a poll: 503 with the code), counted as
// rejections{draining}; the drain's batches close the live clients with
// 1012, counted as disconnects{drain}, and the gateway then stops.
func TestDrainFailsReadinessRefusesNewAndClosesWith1012(t *testing.T) {
	r := newDrainRig(t, nil, "k1", "k2", "k3", "k4")
	wsConn := r.dialWS("k1")
	stream := r.openStream("k2", "s2")
	poll := make(chan string, 1) // a held poll, answered by the drain
	go func() {
		code, rest := r.get("/websocket?k3&sid=p3", "X-Socket-Transport: xhrPolling")
		poll <- fmt.Sprintf("%d|%s", code, rest)
	}()
	r.waitLive(3)

	r.cancel() // SIGTERM
	r.awaitPaced()
	if !r.g.hub.Draining() {
		t.Fatal("hub not draining")
	}
	code, body := r.get("/readyz")
	var ready struct{ Status string }
	_ = json.Unmarshal([]byte(body[strings.LastIndex(body, "|")+1:]), &ready)
	if code != http.StatusServiceUnavailable || ready.Status != "draining" {
		t.Errorf("/readyz during the drain: %d %q, want 503 draining", code, body)
	}
	if got := closeCode(r.dialWS("k4")); got != 1012 {
		t.Errorf("new WebSocket during the drain closed with %d, want 1012", got)
	}
	if retry, data := streamClose(r.openStream("k4", "s4")); !strings.Contains(data, `"code":1012`) || retry == "" || retry == "10000" {
		t.Errorf("new EventSource during the drain: retry %q, close %s; want a short retry and code 1012", retry, data)
	}
	if code, rest := r.get("/websocket?k4&sid=p4", "X-Socket-Transport: xhrPolling"); code != http.StatusServiceUnavailable || !strings.HasPrefix(rest, "1012|5|") {
		t.Errorf("new poll during the drain: %d %q, want 503 with code 1012 and Retry-After 5", code, rest)
	}
	if got := testutil.ToFloat64(r.g.metrics.Rejections.WithLabelValues(metrics.RejectDraining)); got != 3 {
		t.Errorf("rejections{draining} = %v, want 3", got)
	}

	// The remaining batches: one session each (3 sessions over 1,000 steps).
	r.release <- struct{}{}
	r.awaitPaced()
	r.release <- struct{}{}
	if got := closeCode(wsConn); got != 1012 {
		t.Errorf("live WebSocket closed with %d, want 1012", got)
	}
	if _, data := streamClose(stream); !strings.Contains(data, `"code":1012`) {
		t.Errorf("live EventSource: close %s, want code 1012", data)
	}
	select {
	case got := <-poll:
		if !strings.HasPrefix(got, "503|1012|") {
			t.Errorf("held poll answered %q, want 503 with code 1012", got)
		}
	case <-time.After(25 * time.Second):
		t.Fatal("held poll not answered")
	}
	r.wait()
	if got := testutil.ToFloat64(r.g.metrics.Disconnects.WithLabelValues(metrics.DiscDrain)); got != 3 {
		t.Errorf("disconnects{drain} = %v, want 3", got)
	}
}

// TestSkipDrainClosesTheRestAtOnce: a second signal during the drain
// (SkipDrain) closes every client not yet told at once, with 1001.
func TestSkipDrainClosesTheRestAtOnce(t *testing.T) {
	r := newDrainRig(t, nil, "k1", "k2", "k3")
	conns := []net.Conn{r.dialWS("k1"), r.dialWS("k2"), r.dialWS("k3")}
	r.waitLive(3)
	r.cancel()
	r.awaitPaced() // one closed with 1012, the drain waits for its next step
	r.g.SkipDrain()
	codes := map[int]int{}
	for _, c := range conns {
		codes[closeCode(c)]++
	}
	if codes[1012] != 1 || codes[1001] != 2 {
		t.Errorf("close codes %v, want one 1012 and two 1001", codes)
	}
	r.wait()
}

// TestNoDrainWithoutClientsOrPeriod: with no client, or --drain-period 0,
// the gateway shuts down at once, as before drains existed.
func TestNoDrainWithoutClientsOrPeriod(t *testing.T) {
	r := newDrainRig(t, nil, "k1")
	r.cancel()
	r.wait() // the pacer would block forever: the drain did not run
	if r.g.hub.Draining() {
		t.Error("drained with no client")
	}

	r = newDrainRig(t, []string{"--drain-period", "0"}, "k1")
	c := r.dialWS("k1")
	r.waitLive(1)
	r.cancel()
	if got := closeCode(c); got != 1001 {
		t.Errorf("closed with %d, want 1001 without a drain", got)
	}
	r.wait()
}

// bufferedConn reads first what the dialer buffered behind the handshake.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
