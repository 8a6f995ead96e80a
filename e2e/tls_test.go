package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/gobwas/ws"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/wspubsub/wspubsub/internal/gateway"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

// tlsStack is a stack (real Redis and MongoDB) whose gateway serves TLS
// with a certificate of the test's own CA; hc trusts that CA and offers
// HTTP/2.
type tlsStack struct {
	*stack
	ca *testenv.CA
	hc *http.Client
}

func newTLSStack(t *testing.T, args []string, keys ...string) *tlsStack {
	t.Helper()
	ca := testenv.NewCA(t)
	certFile, keyFile := ca.Issue(t, t.TempDir(), 2)
	// Redis, MongoDB and the keys as newStackOn makes them; only the start
	// differs (its readiness check speaks https).
	s := newServices(t, testenv.Redis(t), keys...)
	ts := &tlsStack{stack: s, ca: ca, hc: &http.Client{Transport: &http.Transport{
		TLSClientConfig: ca.ClientConfig(), ForceAttemptHTTP2: true}}}
	t.Cleanup(ts.hc.CloseIdleConnections)
	args = append([]string{"--listen", "127.0.0.1:0", "--redis-url", s.redis.URL(), "--mongo-uri", s.mongo.URL(),
		"--shutdown-timeout", "5s", "--log-level", "debug", "--tls-cert", certFile, "--tls-key", keyFile}, args...)
	s.launch(args, gateway.Options{})
	eventually(t, 20*time.Second, "gateway ready over https", func() bool {
		resp, err := ts.hc.Get(ts.httpsURL("/readyz"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return ts
}

func (s *tlsStack) httpsURL(path string) string { return "https://" + s.gw.Addr().String() + path }

// get performs a GET over hc, failing unless it was served over HTTP/2.
func (s *tlsStack) get(t *testing.T, url string, hdr ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.ProtoMajor != 2 {
		resp.Body.Close()
		t.Fatalf("GET %s: served over %s, want HTTP/2", url, resp.Proto)
	}
	return resp
}

// TestTLSEveryTransport: on a --tls-cert gateway, wss:// delivers a
// message published on Redis; EventSource and long-polling deliver over
// HTTP/2; /publish, /metrics and the demo page answer over HTTP/2.
func TestTLSEveryTransport(t *testing.T) {
	s := newTLSStack(t, []string{"--poll-timeout", "30s"}, demoKey)

	// WebSocket: wss://, on HTTP/1.1.
	d := ws.Dialer{Timeout: patience, TLSConfig: s.ca.ClientConfig()}
	c, br, _, err := d.Dial(context.Background(), "wss://"+s.gw.Addr().String()+s.cfg.Path+"?"+demoKey)
	if err != nil {
		t.Fatalf("wss dial: %v", err)
	}
	wc := &client{t: t, c: c, r: c, pong: true}
	if br != nil {
		wc.r = io.MultiReader(br, c)
	}
	t.Cleanup(func() { c.Close() })
	waitLive(t, s.stack, 1)
	s.publish(envelope(`{"over":"wss"}`, demoKey))
	wc.expect(`{"data":{"over":"wss"}}`)
	wc.send("ping")
	wc.expect("heartbeat message")

	// POST /publish over HTTP/2 (a loopback caller needs no token).
	resp, err := s.hc.Post(s.httpsURL("/publish"), "application/json", strings.NewReader(envelope(`{"via":"https"}`, demoKey)))
	if err != nil || resp.StatusCode != http.StatusAccepted || resp.ProtoMajor != 2 {
		t.Fatalf("POST /publish: %v %v", resp, err)
	}
	resp.Body.Close()
	wc.expect(`{"data":{"via":"https"}}`)

	// EventSource over HTTP/2.
	es := s.get(t, s.httpsURL(s.cfg.Path+"?"+demoKey+"&sid=tls-es"), "Accept", "text/event-stream")
	t.Cleanup(func() { es.Body.Close() })
	sse := &sseClient{t: t, resp: es, br: bufio.NewReader(es.Body)}
	waitLive(t, s.stack, 2)
	s.publish(envelope(`{"over":"h2 eventsource"}`, demoKey))
	if typ, data := sse.next(); typ != "message" || data != `{"data":{"over":"h2 eventsource"}}` {
		t.Fatalf("EventSource over h2: %s %q", typ, data)
	}
	wc.expect(`{"data":{"over":"h2 eventsource"}}`)

	// Long-polling over HTTP/2: a held poll answers with the message.
	polled := make(chan string, 1)
	go func() {
		r := s.get(t, s.httpsURL(s.cfg.Path+"?"+demoKey+"&sid=tls-poll"), "X-Socket-Transport", "xhrPolling")
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		polled <- string(b)
	}()
	waitLive(t, s.stack, 3)
	s.publish(envelope(`{"over":"h2 polling"}`, demoKey))
	select {
	case got := <-polled:
		if got != `{"data":{"over":"h2 polling"}}` {
			t.Fatalf("poll over h2: %q", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("poll over h2: no answer within 20s")
	}

	for _, path := range []string{"/metrics", "/", "/wspubsub.js"} {
		r := s.get(t, s.httpsURL(path))
		r.Body.Close()
		if r.StatusCode != http.StatusOK {
			t.Fatalf("GET %s over h2: %d", path, r.StatusCode)
		}
	}
}

// TestBrowserDemoPageOverTLS: headless Chromium loads the demo page over
// https (HTTP/2) and receives a published message over wss:// — the
// gateway offers no RFC 8441 WebSocket over HTTP/2, so the browser opens
// its WebSocket on HTTP/1.1 — and over EventSource on HTTP/2.
func TestBrowserDemoPageOverTLS(t *testing.T) {
	for _, transport := range []string{"websocket", "eventsource"} {
		t.Run(transport, func(t *testing.T) {
			key := "tls-browser-" + transport
			s := newTLSStack(t, nil, key)
			ctx := browser(t, chromedp.Flag("ignore-certificate-errors", true))
			run(t, ctx, 20*time.Second, "page connects over TLS",
				chromedp.Navigate(s.httpsURL("/?key="+key+"&transports="+transport)),
				chromedp.WaitVisible(chromedp.CSS(`#state[data-state="open"]`)),
				waitText("#transport", transport))
			proto, err := chromedp.Run(ctx, chromedp.Evaluate[string](`performance.getEntriesByType("navigation")[0].nextHopProtocol`))
			if err != nil || proto != "h2" {
				t.Fatalf("page loaded over %q (%v), want h2", proto, err)
			}
			waitLive(t, s.stack, 1)
			s.publish(envelope(`{"hello":"tls `+transport+`"}`, key))
			run(t, ctx, 10*time.Second, "message appears", waitText("#messages", `"hello": "tls `+transport+`"`))
			screenshot(t, ctx, "demo-tls-"+transport+".png")
		})
	}
}

// TestTLSWebSocketBurstAndServerClose: over wss://, where every write goes
// through crypto/tls on the connection's own goroutine, a burst arrives
// whole and in order, and a close the server starts (the key revoked)
// reaches the client with its code.
func TestTLSWebSocketBurstAndServerClose(t *testing.T) {
	s := newTLSStack(t, []string{"--recheck-interval", "200ms"}, demoKey)
	d := ws.Dialer{Timeout: patience, TLSConfig: s.ca.ClientConfig()}
	c, br, _, err := d.Dial(context.Background(), "wss://localhost:"+portOf(s.gw.Addr().String())+s.cfg.Path+"?"+demoKey)
	if err != nil {
		t.Fatalf("wss dial: %v", err)
	}
	wc := &client{t: t, c: c, r: c, pong: true}
	if br != nil {
		wc.r = io.MultiReader(br, c)
	}
	t.Cleanup(func() { c.Close() })
	waitLive(t, s.stack, 1)
	const n = 500
	for i := range n {
		s.publish(envelope(fmt.Sprintf(`{"n":%d,"pad":%q}`, i, strings.Repeat("x", 512)), demoKey))
	}
	for i := range n {
		wc.expect(fmt.Sprintf(`{"data":{"n":%d,"pad":%q}}`, i, strings.Repeat("x", 512)))
	}
	if _, err := s.keys.DeleteOne(context.Background(), bson.D{{Key: "_id", Value: demoKey}}); err != nil {
		t.Fatal(err)
	}
	wc.expectClose(4403)
	waitLive(t, s.stack, 0)
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// TestBinaryTLS runs the binary as the README's TLS section does: one of
// the two files alone is a usage error (exit 2); with both (here through
// their WSPUBSUB_* twins) it serves https:// and wss://, refuses plain
// HTTP with 400, and `wspubsub publish --gateway https://…` reaches a wss://
// client when the CA is trusted (SSL_CERT_FILE).
func TestBinaryTLS(t *testing.T) {
	bin := binary(t)
	dir := t.TempDir()
	ca := testenv.NewCA(t)
	certFile, keyFile := ca.Issue(t, dir, 2)
	caFile := ca.WriteCert(t, dir)

	out, err := exec.Command(bin, "serve", "--tls-cert", certFile).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "--tls-cert and --tls-key go together") {
		t.Fatalf("--tls-cert alone: %v, want exit 2 and the reason\n%s", err, out)
	}

	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cmd := exec.Command(bin, "--listen", addr)
	cmd.Env = append(os.Environ(), "WSPUBSUB_TLS_CERT="+certFile, "WSPUBSUB_TLS_KEY="+keyFile)
	var logs lockedBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ca.ClientConfig(), ForceAttemptHTTP2: true}}
	defer hc.CloseIdleConnections()
	eventually(t, 10*time.Second, "gateway up over https", func() bool {
		r, err := hc.Get("https://" + addr + "/readyz")
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == 200
	})
	r, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("plain GET: %v", err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "this port serves TLS: use https:// or wss://") {
		t.Fatalf("plain GET on the TLS port: %d %q", r.StatusCode, body)
	}

	d := ws.Dialer{Timeout: patience, TLSConfig: ca.ClientConfig()}
	c, br, _, err := d.Dial(context.Background(), "wss://"+addr+"/websocket?"+demoKey)
	if err != nil {
		t.Fatalf("wss dial: %v", err)
	}
	defer c.Close()
	wc := &client{t: t, c: c, r: c, pong: true}
	if br != nil {
		wc.r = io.MultiReader(br, c)
	}
	wc.send("ping")
	wc.expect("heartbeat message") // admitted: a publish from now on reaches it
	pub := exec.Command(bin, "publish", "--gateway", "https://"+addr, "--to", demoKey, `{"over":"tls"}`)
	pub.Env = append(os.Environ(), "SSL_CERT_FILE="+caFile)
	if out, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("wspubsub publish over https: %v\n%s", err, out)
	}
	wc.expect(`{"data":{"over":"tls"}}`)

	_ = cmd.Process.Signal(syscall.SIGTERM)
	wc.expectClose(1012) // the drain's close frame, written through crypto/tls
	waitGatewayExit(t, cmd, &logs)
}

// TestTLSEventSourceOutlivesWriteTimeoutOnHTTP2: HTTP/2 enforces a
// stream's write deadline with a timer, even while nothing is written; a
// stream quiet for longer than --write-timeout must live on and deliver.
func TestTLSEventSourceOutlivesWriteTimeoutOnHTTP2(t *testing.T) {
	s := newTLSStack(t, []string{"--write-timeout", "1s"}, demoKey)
	es := s.get(t, s.httpsURL(s.cfg.Path+"?"+demoKey), "Accept", "text/event-stream")
	t.Cleanup(func() { es.Body.Close() })
	sse := &sseClient{t: t, resp: es, br: bufio.NewReader(es.Body)}
	waitLive(t, s.stack, 1)
	time.Sleep(5 * time.Second) // quiet for five write timeouts: the bug's condition, not a measurement
	s.publish(envelope(`{"after":"quiet"}`, demoKey))
	if typ, data := sse.next(); typ != "message" || data != `{"data":{"after":"quiet"}}` {
		t.Fatalf("after a quiet second: %s %q", typ, data)
	}
}
