package e2e

// Support for the attacks on the HTTP side of the gateway (issue 7,
// section 2 and the EventSource and '+' findings of section 4), which are
// in attack_poll_test.go (polling sessions, EventSource, client POSTs,
// session caps) and attack_server_test.go (the HTTP server's timeouts, the
// socket bound, the failed-key throttle). Each test runs the attack
// against a running gateway and shows the documented outcome, that the
// gateway is still alive, and that a normal WebSocket client on it still
// receives a published message (expected within 2 s; the latency is
// logged, and over 100 ms only noted, since a loaded CI machine must not
// fail the test).
//
// Identifiers here start with "ha" so they do not collide with the other
// attack files of the package.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// haNormal is the key of the normal client each test checks on.
const haNormal = "normal-client"

// haDialFrom returns a dial function whose connections leave from ip
// (any 127.x address reaches the gateway on 127.0.0.1), or the default
// source address when ip is "".
func haDialFrom(ip string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: patience}
	if ip != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ip)}
	}
	return d.DialContext
}

// haHTTPClient is an HTTP client of its own (own keep-alive pool) whose
// connections leave from ip.
func haHTTPClient(t *testing.T, ip string) *http.Client {
	hc := &http.Client{Transport: &http.Transport{DialContext: haDialFrom(ip), MaxIdleConnsPerHost: 64}}
	t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// haDialWS opens a WebSocket from ip with extra request headers.
func haDialWS(s *stack, query, ip string, hdr http.Header) (*client, error) {
	d := ws.Dialer{Timeout: patience, NetDial: haDialFrom(ip)}
	if hdr != nil {
		d.Header = ws.HandshakeHeaderHTTP(hdr)
	}
	c, br, _, err := d.Dial(context.Background(), s.url(query))
	if err != nil {
		return nil, err
	}
	cl := &client{t: s.t, c: c, r: c, pong: true}
	if br != nil {
		cl.r = io.MultiReader(br, c)
	}
	s.t.Cleanup(func() { c.Close() })
	return cl, nil
}

// haProbe checks that the gateway is alive (/healthz) and that a normal
// WebSocket client of key, connecting from ip, is admitted and receives a
// message published on Redis within 2 s; it returns that latency.
func haProbe(s *stack, key, ip string) (time.Duration, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: haDialFrom(ip), DisableKeepAlives: true}}
	resp, err := hc.Get(s.httpURL("/healthz"))
	if err != nil {
		return 0, fmt.Errorf("/healthz: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("/healthz answered %d", resp.StatusCode)
	}
	connects := s.gw.Metrics().Connects.WithLabelValues("websocket")
	before := testutil.ToFloat64(connects)
	c, err := haDialWS(s, key, ip, nil)
	if err != nil {
		return 0, fmt.Errorf("normal client: dial: %w", err)
	}
	defer c.close()
	// Admitted when its session is registered (no other WebSocket client
	// connects meanwhile in these tests); a refusal arrives as a close.
	for deadline := time.Now().Add(patience); testutil.ToFloat64(connects) <= before; {
		if time.Now().After(deadline) {
			_, err := c.next(100 * time.Millisecond)
			return 0, fmt.Errorf("normal client not admitted within %v: %v", patience, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	want := fmt.Sprintf(`{"probe":%d}`, time.Now().UnixNano())
	start := time.Now()
	if err := s.rdb.Publish(context.Background(), s.cfg.Channel, envelope(want, key)).Err(); err != nil {
		return 0, fmt.Errorf("redis publish: %w", err)
	}
	got, err := c.next(patience)
	latency := time.Since(start)
	if err != nil {
		return latency, fmt.Errorf("normal client: no message within %v: %w", patience, err)
	}
	if got != `{"data":`+want+`}` {
		return latency, fmt.Errorf("normal client got %s, want the probe %s", got, want)
	}
	return latency, nil
}

// haStillServes fails the test unless haProbe succeeds; it logs the latency.
func haStillServes(t *testing.T, s *stack, key, ip, after string) {
	t.Helper()
	latency, err := haProbe(s, key, ip)
	if err != nil {
		t.Fatalf("after %s: %v", after, err)
	}
	note := ""
	if latency > 100*time.Millisecond {
		note = " (over the 100 ms goal: a loaded machine?)"
	}
	t.Logf("after %s: gateway alive, a normal client received a published message in %v%s", after, latency.Round(10*time.Microsecond), note)
}

type haAnswer struct {
	code int
	body string
	hdr  http.Header
	err  error
}

// haPoll performs one bullet-style poll of query with extra headers.
func haPoll(ctx context.Context, hc *http.Client, s *stack, query string, hdr http.Header) haAnswer {
	return haDo(ctx, hc, "GET", s.httpClientURL(query), "", hdr, "X-Socket-Transport", "xhrPolling")
}

func haDo(ctx context.Context, hc *http.Client, method, url, body string, hdr http.Header, name, value string) haAnswer {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return haAnswer{err: err}
	}
	req.Header.Set(name, value)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		return haAnswer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return haAnswer{resp.StatusCode, string(b), resp.Header, err}
}

// haAbandonPoll starts a poll with a fresh sid and abandons it (the client
// goes away) as soon as the gateway admitted it. It returns 0 when the
// poll was admitted, else the status the gateway answered with at once.
func haAbandonPoll(hc *http.Client, s *stack, key, sid string, hdr http.Header) (int, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch := make(chan haAnswer, 1)
	go func() { ch <- haPoll(ctx, hc, s, key+"&sid="+sid, hdr) }()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case a := <-ch:
			if a.err != nil {
				return 0, a.err
			}
			return a.code, nil
		case <-deadline:
			return 0, errors.New("poll neither admitted nor answered within 20s")
		case <-time.After(2 * time.Millisecond):
		}
		if s.gw.Hub().Find(key, "sid:"+sid) != nil {
			cancel()
			<-ch
			return 0, nil
		}
	}
}

// haPollingGauge is wspubsub_connections{transport="polling"}.
func haPollingGauge(s *stack) float64 {
	return testutil.ToFloat64(s.gw.Metrics().Connections.WithLabelValues("polling"))
}

func haRejections(s *stack, reason string) float64 {
	return testutil.ToFloat64(s.gw.Metrics().Rejections.WithLabelValues(reason))
}

// haRawExchange writes req on a new connection while reading the answer,
// so a server that answers before reading everything (and closes) is seen
// whatever the socket buffers hold. It returns the response status.
func haRawExchange(addr string, req []byte, timeout time.Duration) (int, error) {
	c, err := net.DialTimeout("tcp", addr, patience)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	go func() { _, _ = c.Write(req) }() // fails once the server closes: expected
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func mb(b uint64) float64 { return float64(b) / (1 << 20) }

// haReadLine returns the next line of an event stream without its end, as
// the EventSource standard splits them: at CRLF, LF or a bare CR.
func haReadLine(br *bufio.Reader) (string, error) {
	var b []byte
	for {
		c, err := br.ReadByte()
		if err != nil {
			return string(b), err
		}
		switch c {
		case '\n':
			return string(b), nil
		case '\r':
			if next, err := br.Peek(1); err == nil && next[0] == '\n' {
				_, _ = br.ReadByte()
			}
			return string(b), nil
		}
		b = append(b, c)
	}
}

// haNextEvent reads the next event's data as a conforming EventSource
// parser does (data lines joined with LF); raw is every byte read.
func haNextEvent(t *testing.T, c *sseClient) (data string, raw []byte) {
	t.Helper()
	timer := time.AfterFunc(patience, func() { c.resp.Body.Close() })
	defer timer.Stop()
	var lines []string
	for {
		line, err := haReadLine(c.br)
		raw = append(append(raw, line...), '\n')
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		switch {
		case line == "" && lines != nil:
			return strings.Join(lines, "\n"), raw
		case strings.HasPrefix(line, "data:"):
			lines = append(lines, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
}
