package e2e

// Support for the resume tests (resume_test.go, issue 8): one resuming
// client type over the three transports, the durable publish, and a stack
// on a Redis of the test's choice. Identifiers start with "rs".

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const (
	rsWS      = "websocket"
	rsSSE     = "eventsource"
	rsPolling = "polling"
)

var rsTransports = []string{rsWS, rsSSE, rsPolling}

// rsFrame is one message as a client received it.
type rsFrame struct {
	data  string // the WebSocket text, the SSE event's data, the poll's body
	sseID string // the SSE event's id: line ("" when none, or not SSE)
	event string // the SSE event type ("message" unless set)
}

// rsConn is one client connection, on any transport.
type rsConn interface {
	next() rsFrame
	close()
}

// rsOpen connects a client of key over transport. query is appended to
// "<key>" (e.g. "&since=" or "&since=<id>"; "" for an old client). hdr
// goes on the request (WebSocket handshake, EventSource GET, every poll).
func rsOpen(t *testing.T, s *stack, transport, key, query string, hdr http.Header) rsConn {
	t.Helper()
	switch transport {
	case rsWS:
		c, err := dial(t, s.url(key+query), hdr)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		return &rsWSConn{c}
	case rsSSE:
		return rsOpenSSE(t, s.httpClientURL(key+query), hdr)
	case rsPolling:
		since, ok := "", strings.Contains(query, "since=")
		if ok {
			v, _ := url.ParseQuery(strings.TrimPrefix(query, "&"))
			since = v.Get("since")
			query = regexp.MustCompile(`&since=[^&]*`).ReplaceAllString(query, "")
		}
		return &rsPollConn{t: t, base: s.httpClientURL(key + "&sid=" + rsSID(t) + query), resume: ok, since: since, hdr: hdr}
	}
	t.Fatalf("unknown transport %s", transport)
	return nil
}

var rsSIDs atomic.Int64

// rsSID names a new polling connection (a new page load).
func rsSID(*testing.T) string { return fmt.Sprintf("rs%d", rsSIDs.Add(1)) }

type rsWSConn struct{ c *client }

func (w *rsWSConn) next() rsFrame {
	w.c.t.Helper()
	got, err := w.c.next(patience)
	if err != nil {
		w.c.t.Fatalf("websocket: waiting for a frame: %v", err)
	}
	return rsFrame{data: got}
}

func (w *rsWSConn) close() { w.c.close() }

// rsSSEConn reads an event stream, id: lines included.
type rsSSEConn struct {
	t    *testing.T
	resp *http.Response
	br   *bufio.Reader
}

func rsOpenSSE(t *testing.T, u string, hdr http.Header) *rsSSEConn {
	t.Helper()
	c := openSSE(t, u, hdr)
	return &rsSSEConn{t: t, resp: c.resp, br: c.br}
}

func (c *rsSSEConn) next() rsFrame {
	c.t.Helper()
	timer := time.AfterFunc(patience, func() { c.resp.Body.Close() })
	defer timer.Stop()
	f, data := rsFrame{event: "message"}, []string(nil)
	for {
		line, err := c.br.ReadString('\n')
		if err != nil {
			c.t.Fatalf("eventsource: waiting for an event: %v", err)
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "" && data != nil:
			f.data = strings.Join(data, "\n")
			return f
		case line == "":
			f = rsFrame{event: "message"} // a comment block or a lone retry:
		case strings.HasPrefix(line, "id: "):
			f.sseID = line[len("id: "):]
		case strings.HasPrefix(line, "event: "):
			f.event = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = append(data, line[len("data: "):])
		}
	}
}

func (c *rsSSEConn) close() { c.resp.Body.Close() }

// rsPollConn polls as wspubsub.js does: since=<last id received> on every
// poll (when resuming), one message per answer.
type rsPollConn struct {
	t      *testing.T
	base   string
	resume bool
	since  string
	hdr    http.Header
}

// poll performs one poll naming since; it returns the status and body.
func (p *rsPollConn) poll(since string) (int, string, http.Header) {
	p.t.Helper()
	u := p.base
	if p.resume {
		u += "&since=" + url.QueryEscape(since)
	}
	return poll(p.t, u, p.hdr)
}

func (p *rsPollConn) next() rsFrame {
	p.t.Helper()
	for deadline := time.Now().Add(patience); time.Now().Before(deadline); {
		code, body, h := p.poll(p.since)
		if code != 200 {
			p.t.Fatalf("poll: %d %q (close code %s)", code, body, h.Get("X-Wspubsub-Close-Code"))
		}
		if body == "" {
			continue // the poll timed out empty
		}
		var m struct{ ID string }
		if json.Unmarshal([]byte(body), &m) == nil && m.ID != "" {
			p.since = m.ID
		}
		return rsFrame{data: body}
	}
	p.t.Fatal("polling: no message within 10s")
	return rsFrame{}
}

func (p *rsPollConn) close() {}

var rsPositionRE = regexp.MustCompile(`^\{"id":"([0-9a-z.-]+)"\}$`)

// rsPosition expects the position frame and returns its id.
func rsPosition(t *testing.T, c rsConn) string {
	t.Helper()
	f := c.next()
	m := rsPositionRE.FindStringSubmatch(f.data)
	if m == nil {
		t.Fatalf("want the position frame, got %q", f.data)
	}
	if _, ok := c.(*rsSSEConn); ok && f.sseID != m[1] {
		t.Fatalf("position frame with id: line %q, want %q", f.sseID, m[1])
	}
	return m[1]
}

// rsExpect expects the recorded message {"id":id,"data":n} (on
// EventSource also with the id: line).
func rsExpect(t *testing.T, c rsConn, id string, n int) {
	t.Helper()
	f := c.next()
	if want := fmt.Sprintf(`{"id":%q,"data":%d}`, id, n); f.data != want {
		t.Fatalf("got %q, want %q", f.data, want)
	}
	if _, ok := c.(*rsSSEConn); ok && f.sseID != id {
		t.Fatalf("event for %s with id: line %q", id, f.sseID)
	}
}

func rsExpectRaw(t *testing.T, c rsConn, want string) rsFrame {
	t.Helper()
	f := c.next()
	if f.data != want {
		t.Fatalf("got %q, want %q", f.data, want)
	}
	return f
}

// rsAnswer is POST /publish's answer.
type rsAnswer struct {
	code   int
	Status string   `json:"status"`
	IDs    []string `json:"ids"`
	Error  string   `json:"error"`
	raw    string
	hdr    http.Header
}

// rsPost POSTs body to /publish (application/json) with an optional
// Idempotency-Key.
func rsPost(t *testing.T, s *stack, body, idem string) rsAnswer {
	t.Helper()
	req, _ := http.NewRequest("POST", s.httpURL("/publish"), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if idem != "" {
		req.Header.Set("Idempotency-Key", idem)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := rsAnswer{code: resp.StatusCode, raw: string(b), hdr: resp.Header}
	_ = json.Unmarshal(b, &a)
	return a
}

// rsPublish publishes {"data":n} to key durably and returns its id.
func rsPublish(t *testing.T, s *stack, key string, n int) string {
	t.Helper()
	a := rsPost(t, s, envelope(fmt.Sprint(n), key), "")
	if a.code != 202 || a.Status != "accepted" || len(a.IDs) != 1 {
		t.Fatalf("publish %d: %d %s", n, a.code, a.raw)
	}
	return a.IDs[0]
}

// rsPublishRetrying publishes {"data":n} to key with an idempotency key,
// retrying (as a backend should) until the gateway acknowledges it: safe
// however many attempts reached Redis.
func rsPublishRetrying(t *testing.T, s *stack, key string, n int) string {
	t.Helper()
	idem := fmt.Sprintf("rs-%s-%d-%d", key, n, time.Now().UnixNano())
	var last rsAnswer
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		last = rsPost(t, s, envelope(fmt.Sprint(n), key), idem)
		if last.code == 202 && len(last.IDs) == 1 {
			return last.IDs[0]
		}
		if last.code != 503 {
			t.Fatalf("publish %d: %d %s", n, last.code, last.raw)
		}
	}
	t.Fatalf("publish %d not acknowledged within 30s: %d %s", n, last.code, last.raw)
	return ""
}

// rsWaitGone waits until key has no live session (a closed connection has
// left), so what is published next cannot reach it live.
func rsWaitGone(t *testing.T, s *stack, key string) {
	t.Helper()
	eventually(t, 5*time.Second, "the closed connection to leave", func() bool { return len(s.gw.Hub().Sessions(key)) == 0 })
}

// rsWaitSessions waits until key has n live sessions.
func rsWaitSessions(t *testing.T, s *stack, key string, n int) {
	t.Helper()
	eventually(t, 5*time.Second, fmt.Sprintf("%d sessions of %s", n, key), func() bool { return len(s.gw.Hub().Sessions(key)) == n })
}
