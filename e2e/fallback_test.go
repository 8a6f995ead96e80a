package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// sseClient reads an EventSource stream the way a browser does.
type sseClient struct {
	t    *testing.T
	resp *http.Response
	br   *bufio.Reader
}

func openSSE(t *testing.T, url string, hdr http.Header) *sseClient {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("SSE answer %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return &sseClient{t: t, resp: resp, br: bufio.NewReader(resp.Body)}
}

// next returns the next event's type and data (comments skipped).
func (c *sseClient) next() (string, string) {
	c.t.Helper()
	typ, data := "message", []string(nil)
	done := make(chan struct{})
	timer := time.AfterFunc(patience, func() { c.resp.Body.Close() })
	defer timer.Stop()
	defer close(done)
	for {
		line, err := c.br.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading stream: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if data != nil {
				return typ, strings.Join(data, "\n")
			}
		case strings.HasPrefix(line, ":"), strings.HasPrefix(line, "retry:"):
		case strings.HasPrefix(line, "event: "):
			typ = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			data = append(data, line[len("data: "):])
		}
	}
}

// post sends client text the way bullet does (form content type).
func post(t *testing.T, url, body string, hdr http.Header) (int, string, http.Header) {
	t.Helper()
	return do(t, "POST", url, body, hdr, "Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
}

// do performs one request with hdr plus one extra header and returns the
// status, body and headers.
func do(t *testing.T, method, url, body string, hdr http.Header, name, value string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set(name, value)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func (s *stack) httpClientURL(query string) string { return s.httpURL(s.cfg.Path + "?" + query) }

func TestEventSourceTransport(t *testing.T) {
	s := newStack(t, []string{"--upstream-channel", "up"}, demoKey)
	ev := watch(t, s, "connected", "disconnected", "up")
	c := openSSE(t, s.httpClientURL(demoKey+"&_=123"), nil)
	if m := nextEvent(t, ev); m.Channel != "connected" || m.Payload != demoKey {
		t.Fatalf("event %s %s", m.Channel, m.Payload)
	}
	s.publish(envelope(`{"a":1}`, demoKey))
	if typ, data := c.next(); typ != "message" || data != `{"data":{"a":1}}` {
		t.Fatalf("got %s %q", typ, data)
	}
	// A message with newlines is split over several data: lines and rejoined.
	s.publish("{\"recipients\":[\"" + demoKey + "\"],\n\"data\":{\n\"b\":2}}")
	if _, data := c.next(); data != "{\"data\":{\n\"b\":2}}" {
		t.Fatalf("multi-line data %q", data)
	}
	// Client text goes by POST; ping is answered in the POST's body.
	if code, body, _ := post(t, s.httpClientURL(demoKey), "ping", nil); code != 200 || body != "heartbeat message" {
		t.Fatalf("POST ping: %d %q", code, body)
	}
	if code, body, _ := post(t, s.httpClientURL(demoKey), "hello there", nil); code != 200 || body != "" {
		t.Fatalf("POST text: %d %q", code, body)
	}
	m := nextEvent(t, ev)
	var up struct{ Key, Data, Conn, At string }
	if err := json.Unmarshal([]byte(m.Payload), &up); err != nil || m.Channel != "up" || up.Key != demoKey || up.Data != "hello there" || up.Conn == "" {
		t.Fatalf("upstream %s %s", m.Channel, m.Payload)
	}
	c.resp.Body.Close()
	if m := nextEvent(t, ev); m.Channel != "disconnected" {
		t.Fatalf("event %s, want one disconnected (POSTs must not re-announce)", m.Channel)
	}
	waitLive(t, s, 0)
}

func TestEventSourceRejectionAndRevocation(t *testing.T) {
	s := newStack(t, []string{"--recheck-interval", "200ms"}, demoKey)
	bad := openSSE(t, s.httpClientURL("nope"), nil)
	if typ, data := bad.next(); typ != "close" || !strings.Contains(data, `"code":4401`) {
		t.Fatalf("unknown key: %s %s", typ, data)
	}
	c := openSSE(t, s.httpClientURL(demoKey), nil)
	waitLive(t, s, 1)
	if _, err := s.keys.DeleteOne(context.Background(), bson.D{{Key: "_id", Value: demoKey}}); err != nil {
		t.Fatal(err)
	}
	if typ, data := c.next(); typ != "close" || !strings.Contains(data, `"code":4403`) {
		t.Fatalf("revoked: %s %s", typ, data)
	}
	waitLive(t, s, 0)
}

// poll performs one bullet-style poll.
func poll(t *testing.T, url string, hdr http.Header) (int, string, http.Header) {
	t.Helper()
	return do(t, "GET", url, "", hdr, "X-Socket-Transport", "xhrPolling")
}

// pollNext polls until a message comes: an empty answer is only the poll
// timeout (short in these tests), so a slow machine makes it come later, not
// go missing.
func pollNext(t *testing.T, url string) (int, string) {
	t.Helper()
	for start := time.Now(); ; {
		code, body, _ := poll(t, url, nil)
		if code != 200 || body != "" || time.Since(start) > patience {
			return code, body
		}
	}
}

func TestLongPollingIsOneLogicalConnection(t *testing.T) {
	// The idle timeout is well above the gaps between this test's requests,
	// even on a loaded machine, and short enough to wait out at the end.
	s := newStack(t, []string{"--poll-timeout", "300ms", "--idle-timeout", "5s", "--ping-interval", "500ms"}, demoKey)
	ev := watch(t, s, "connected", "disconnected")
	url := s.httpClientURL(demoKey + "&_=1416911718123")

	// An empty poll is 200 with an empty body, never 204.
	if code, body, _ := poll(t, url, nil); code != 200 || body != "" {
		t.Fatalf("empty poll: %d %q", code, body)
	}
	if m := nextEvent(t, ev); m.Channel != "connected" {
		t.Fatalf("first event %s", m.Channel)
	}
	// A held poll answers as soon as a message arrives.
	go func() { time.Sleep(100 * time.Millisecond); s.publish(envelope(`{"n":0}`, demoKey)) }()
	if code, body := pollNext(t, url); code != 200 || body != `{"data":{"n":0}}` {
		t.Fatalf("held poll: %d %q", code, body)
	}
	// Messages arriving between polls wait, in order, none lost.
	for i := 1; i <= 3; i++ {
		s.publish(envelope(`{"n":`+string(rune('0'+i))+`}`, demoKey))
	}
	for i := 1; i <= 3; i++ {
		if _, body := pollNext(t, url+"&_=2"); body != `{"data":{"n":`+string(rune('0'+i))+`}}` {
			t.Fatalf("queued message %d: %q", i, body)
		}
	}
	// POSTs neither re-authenticate nor re-announce; ping is answered.
	for range 3 {
		if code, body, _ := post(t, s.httpClientURL(demoKey), "ping", nil); code != 200 || body != "heartbeat message" {
			t.Fatalf("POST ping: %d %q", code, body)
		}
	}
	if got := testutil.ToFloat64(s.gw.Metrics().Connects.WithLabelValues("polling")); got != 1 {
		t.Fatalf("connects{polling} = %v after many requests, want 1", got)
	}
	// Gone past the idle timeout: one disconnected event.
	if m := nextEvent(t, ev); m.Channel != "disconnected" || m.Payload != demoKey {
		t.Fatalf("event %s %s", m.Channel, m.Payload)
	}
	waitLive(t, s, 0)
	if got := testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues("idle")); got != 1 {
		t.Fatalf("disconnects{idle} = %v", got)
	}
}

func TestLongPollingRejections(t *testing.T) {
	s := newStack(t, []string{"--poll-timeout", "300ms", "--recheck-interval", "200ms"}, demoKey)
	code, _, h := poll(t, s.httpClientURL("nope"), nil)
	if code != 401 || h.Get("X-Wspubsub-Close-Code") != "4401" {
		t.Fatalf("unknown key: %d %v", code, h)
	}
	url := s.httpClientURL(demoKey + "&sid=tab1")
	if code, _, _ := poll(t, url, nil); code != 200 {
		t.Fatalf("poll %d", code)
	}
	if _, err := s.keys.DeleteOne(context.Background(), bson.D{{Key: "_id", Value: demoKey}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "revocation answered", func() bool {
		code, _, h := poll(t, url, nil)
		return code == 403 && h.Get("X-Wspubsub-Close-Code") == "4403"
	})
	// POST without an open connection is refused.
	if code, _, h := post(t, s.httpClientURL("nope"), "ping", nil); code != 401 || h.Get("X-Wspubsub-Close-Code") != "4401" {
		t.Fatalf("POST without connection: %d", code)
	}
}

func TestCORSForBulletPagesOnAnotherOrigin(t *testing.T) {
	page := "http://page.example:8000"
	s := newStack(t, []string{"--allowed-origins", page, "--poll-timeout", "200ms"}, demoKey)
	req, _ := http.NewRequest("OPTIONS", s.httpClientURL(demoKey), nil)
	req.Header.Set("Origin", page)
	req.Header.Set("Access-Control-Request-Method", "GET")
	req.Header.Set("Access-Control-Request-Headers", "x-socket-transport")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Access-Control-Allow-Origin") != page || !strings.Contains(strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers")), "x-socket-transport") {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	hdr := http.Header{"Origin": {page}}
	if _, _, h := poll(t, s.httpClientURL(demoKey), hdr); h.Get("Access-Control-Allow-Origin") != page {
		t.Fatalf("poll without CORS header: %v", h)
	}
	c := openSSE(t, s.httpClientURL(demoKey), hdr)
	if c.resp.Header.Get("Access-Control-Allow-Origin") != page {
		t.Fatal("EventSource without CORS header")
	}
	if _, err := dial(t, s.url(demoKey), hdr); err != nil {
		t.Fatalf("WebSocket from the allowed page origin: %v", err)
	}
	if code, _, _ := poll(t, s.httpClientURL(demoKey), http.Header{"Origin": {"http://evil.example"}}); code != 403 {
		t.Fatalf("foreign origin poll: %d", code)
	}
}

func TestClientTextRateLimitAndUpstream(t *testing.T) {
	// One token in 1,000 s: no token refills during the test, however slow
	// the machine.
	s := newStack(t, []string{"--upstream-channel", "up", "--client-rate", "0.001", "--client-burst", "3"}, demoKey)
	ev := watch(t, s, "up")
	c := mustDial(t, s.url(demoKey))
	c.send("first")
	if m := nextEvent(t, ev); !strings.Contains(m.Payload, `"data":"first"`) {
		t.Fatalf("upstream %s", m.Payload)
	}
	c.send("ping")
	c.expect("heartbeat message")
	c.send("x")
	c.send("y") // fourth within the burst window: over the limit
	c.expectClose(4029)
	if got := testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues("rate_limited")); got != 1 {
		t.Fatalf("disconnects{rate_limited} = %v", got)
	}
}
