package gateway

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
)

// testGateway is a gateway built by New on 127.0.0.1:0 whose in-process
// broker hands what /publish accepts to published; requests go straight
// to routes().
type testGateway struct {
	*Gateway
	h         http.Handler
	published chan []byte
}

func newTestGateway(t *testing.T, store keystore.KeyStore, args ...string) *testGateway {
	t.Helper()
	cfg, err := config.ParseServe(append([]string{"--listen", "127.0.0.1:0"}, args...), func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	b := broker.NewMemory(cfg.Channel)
	g, err := New(cfg, Options{Broker: b, Store: store, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	tg := &testGateway{Gateway: g, h: g.routes(), published: make(chan []byte, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = b.Run(ctx, func(p []byte) { tg.published <- p }); close(done) }()
	for !b.Ready() {
		time.Sleep(time.Millisecond)
	}
	t.Cleanup(func() { cancel(); <-done; g.cancel(); _ = g.ln.Close() })
	return tg
}

// do sends a request from remote to host; header is "Name: value" lines.
func (tg *testGateway) do(method, host, path, remote, body string, header ...string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, "http://"+host+path, strings.NewReader(body))
	r.RemoteAddr = remote
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		r.Header.Add(k, v)
	}
	w := httptest.NewRecorder()
	tg.h.ServeHTTP(w, r)
	return w
}

const (
	fromLoopback = "127.0.0.1:40000"
	fromStranger = "203.0.113.5:1234"
	ctJSON       = "Content-Type: application/json"
	pubMsg       = `{"broadcast":true,"data":{"n":1}}`
)

func (tg *testGateway) publish(t *testing.T, remote string, want int, header ...string) {
	t.Helper()
	w := tg.do("POST", "127.0.0.1:8088", "/publish", remote, pubMsg, header...)
	if w.Code != want {
		t.Errorf("POST /publish from %s %q: %d %s, want %d", remote, header, w.Code, strings.TrimSpace(w.Body.String()), want)
	}
	if w.Code != http.StatusAccepted && w.Header().Get("Content-Type") != "application/json" {
		t.Errorf("refusal is not JSON: %q", w.Header().Get("Content-Type"))
	}
	// The broker delivers from its own goroutine: what was accepted is
	// waited for as long as a loaded machine may need; a refusal is given
	// a short window to show up wrongly (slowness only hides it, never
	// fails the test).
	wait := 100 * time.Millisecond
	if want == http.StatusAccepted {
		wait = time.Minute
	}
	select {
	case p := <-tg.published:
		if want != http.StatusAccepted {
			t.Errorf("refused request published %s", p)
		}
	case <-time.After(wait):
		if want == http.StatusAccepted {
			t.Errorf("accepted request not published")
		}
	}
}

// Behind a reverse proxy on the same host every request is loopback: with
// a token configured, fromLoopback alone is not enough.
func TestPublishTokenRequiredFromLoopbackToo(t *testing.T) {
	tg := newTestGateway(t, nil, "--publish-token", "s3cret")
	tg.publish(t, fromLoopback, http.StatusUnauthorized, ctJSON)
	tg.publish(t, "[::1]:40000", http.StatusUnauthorized, ctJSON)
	tg.publish(t, fromLoopback, http.StatusAccepted, ctJSON, "Authorization: Bearer s3cret")
	tg.publish(t, fromStranger, http.StatusAccepted, ctJSON, "Authorization: Bearer s3cret")
	tg.publish(t, fromStranger, http.StatusUnauthorized, ctJSON)
}

func TestPublishWrongTokenRefusedWhoeverSendsIt(t *testing.T) {
	tg := newTestGateway(t, nil, "--publish-token", "s3cret")
	for _, remote := range []string{fromLoopback, fromStranger} {
		for _, auth := range []string{"Bearer wrong", "Bearer s3cre", "Bearer s3cretX", "bearer ", "Bearer"} {
			tg.publish(t, remote, http.StatusUnauthorized, ctJSON, "Authorization: "+auth)
		}
	}
	// Without a configured token, any token is wrong, even from loopback.
	open := newTestGateway(t, nil)
	open.publish(t, fromLoopback, http.StatusUnauthorized, ctJSON, "Authorization: Bearer guess")
	open.publish(t, fromLoopback, http.StatusAccepted, ctJSON)
}

// A request relayed by a proxy on the same host is fromLoopback at the socket
// but not a local caller.
func TestPublishForwardedFromLoopbackRefused(t *testing.T) {
	tg := newTestGateway(t, nil)
	for _, h := range []string{"X-Forwarded-For: 198.51.100.7", "Forwarded: for=198.51.100.7", "X-Real-IP: 198.51.100.7", "X-Forwarded-For: 127.0.0.1"} {
		tg.publish(t, fromLoopback, http.StatusForbidden, ctJSON, h)
	}
	tg.publish(t, fromStranger, http.StatusForbidden, ctJSON)
	tg.publish(t, fromLoopback, http.StatusAccepted, ctJSON)
	// The token still admits a relayed request.
	tok := newTestGateway(t, nil, "--publish-token", "s3cret")
	tok.publish(t, fromLoopback, http.StatusUnauthorized, ctJSON, "X-Forwarded-For: 198.51.100.7")
	tok.publish(t, fromLoopback, http.StatusAccepted, ctJSON, "X-Forwarded-For: 198.51.100.7", "Authorization: Bearer s3cret")
}

// CSRF: a page on another origin (or a sandboxed/file page: "null") must
// not publish, whatever it sends, and text/plain (what no-cors fetch and
// forms can send) is refused.
func TestPublishRefusesForeignOriginAndNonJSON(t *testing.T) {
	tg := newTestGateway(t, nil)
	for _, origin := range []string{"https://evil.example", "null", "http://127.0.0.1:9999", "http://127.0.0.1.evil.example:8088", "file://"} {
		tg.publish(t, fromLoopback, http.StatusForbidden, ctJSON, "Origin: "+origin)
	}
	tg.publish(t, fromLoopback, http.StatusAccepted, ctJSON, "Origin: http://127.0.0.1:8088") // the demo page
	for _, ct := range []string{"text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""} {
		tg.publish(t, fromLoopback, http.StatusUnsupportedMediaType, "Content-Type: "+ct)
	}
	tg.publish(t, fromLoopback, http.StatusAccepted, "Content-Type: application/json; charset=utf-8")

	tok := newTestGateway(t, nil, "--publish-token", "s3cret")
	tok.publish(t, fromStranger, http.StatusForbidden, ctJSON, "Authorization: Bearer s3cret", "Origin: null")
	tok.publish(t, fromLoopback, http.StatusUnsupportedMediaType, "Content-Type: text/plain", "Authorization: Bearer s3cret")
}

// DNS rebinding: a page whose name now resolves to 127.0.0.1 is
// same-origin with the gateway as far as the browser goes.
func TestPublishRebindingPageIsNotLocal(t *testing.T) {
	tg := newTestGateway(t, keystore.NewMemory("k")) // not demo mode: any host allowed
	w := tg.do("POST", "rebind.evil.example:8088", "/publish", fromLoopback, pubMsg, ctJSON, "Origin: http://rebind.evil.example:8088")
	if w.Code != http.StatusForbidden {
		t.Fatalf("rebinding page: %d %s", w.Code, w.Body)
	}
	if w := tg.do("POST", "localhost:8088", "/publish", fromLoopback, pubMsg, ctJSON, "Origin: http://localhost:8088"); w.Code != http.StatusAccepted {
		t.Fatalf("page on localhost: %d %s", w.Code, w.Body)
	}
}

func TestAllowedHostsRefuseRebinding(t *testing.T) {
	tg := newTestGateway(t, keystore.NewMemory("k"), "--allowed-hosts", "localhost,127.0.0.1", "--publish-token", "s3cret")
	auth := "Authorization: Bearer s3cret"
	for _, c := range []struct {
		method, path string
		header       []string
	}{
		{"POST", "/publish", []string{ctJSON, auth}},
		{"GET", "/websocket?k", []string{"Accept: text/event-stream"}},
		{"GET", "/websocket?k", []string{"X-Socket-Transport: xhrPolling"}},
		{"GET", "/websocket?k", []string{"Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="}},
		{"POST", "/websocket?k", []string{"Content-Type: text/plain"}},
		{"GET", "/readyz", nil},
		{"GET", "/metrics", []string{auth}},
		{"GET", "/", nil},
		{"GET", "/wspubsub.js", nil},
	} {
		for _, host := range []string{"rebind.evil.example", "rebind.evil.example:8088", "localhost.evil.example", "127.0.0.2:8088", ""} {
			hdr := append([]string{"Origin: http://" + host}, c.header...)
			r := httptest.NewRequest(c.method, "http://placeholder"+c.path, strings.NewReader(pubMsg))
			r.Host, r.RemoteAddr = host, fromLoopback
			for _, h := range hdr {
				k, v, _ := strings.Cut(h, ": ")
				r.Header.Add(k, v)
			}
			w := httptest.NewRecorder()
			tg.h.ServeHTTP(w, r)
			if w.Code != http.StatusMisdirectedRequest {
				t.Errorf("%s %s Host %q: %d, want 421", c.method, c.path, host, w.Code)
			}
		}
	}
	if got := testutil.ToFloat64(tg.metrics.Rejections.WithLabelValues(metrics.RejectHost)); got != 9*5 {
		t.Errorf(`rejections{reason="host"} = %v, want %d`, got, 9*5)
	}
	// /healthz stays open: load balancers probe it by address.
	if w := tg.do("GET", "rebind.evil.example", "/healthz", fromStranger, ""); w.Code != http.StatusOK {
		t.Errorf("/healthz: %d", w.Code)
	}
	for _, host := range []string{"localhost", "localhost:8088", "LOCALHOST.:8088", "127.0.0.1", "127.0.0.1:8088"} {
		if w := tg.do("GET", host, "/readyz", fromLoopback, ""); w.Code != http.StatusOK {
			t.Errorf("/readyz Host %q: %d", host, w.Code)
		}
		if w := tg.do("POST", host, "/publish", fromLoopback, pubMsg, ctJSON, auth); w.Code != http.StatusAccepted {
			t.Errorf("/publish Host %q: %d", host, w.Code)
		}
		<-tg.published
	}
}

// In demo mode (no key store configured) only fromLoopback names are served
// unless --allowed-hosts says otherwise; with a key store, any host.
func TestAllowedHostsDefaults(t *testing.T) {
	demo := newTestGateway(t, nil)
	open := newTestGateway(t, keystore.NewMemory("k"))
	wide := newTestGateway(t, nil, "--allowed-hosts", "*")
	for host, demoOK := range map[string]bool{
		"localhost": true, "localhost:8088": true, "app.localhost:8088": true, "127.0.0.1:8088": true,
		"127.1.2.3": true, "[::1]:8088": true, "::1": true,
		"rebind.evil.example": false, "192.168.1.20:8088": false, "localhost.evil.example": false, "[::2]:8088": false,
	} {
		want := map[bool]int{true: http.StatusOK, false: http.StatusMisdirectedRequest}[demoOK]
		r := httptest.NewRequest("GET", "/readyz", nil)
		r.Host, r.RemoteAddr = host, fromLoopback
		for name, g := range map[string]*testGateway{"demo": demo, "key store": open, "--allowed-hosts *": wide} {
			w := httptest.NewRecorder()
			g.h.ServeHTTP(w, r)
			expect := http.StatusOK
			if name == "demo" {
				expect = want
			}
			if w.Code != expect {
				t.Errorf("%s, Host %q: %d, want %d", name, host, w.Code, expect)
			}
		}
	}
}

func TestHostPolicy(t *testing.T) {
	p := newHostPolicy([]string{"push.example.com", "*.corp.example", "10.0.0.0/8", "::1", "[2001:db8::1]", "192.0.2.1"}, false)
	for host, want := range map[string]bool{
		"push.example.com": true, "PUSH.example.com:443": true, "push.example.com.": true,
		"a.corp.example": true, "a.b.corp.example:1": true, "corp.example": false, "xcorp.example": false,
		"10.2.3.4:80": true, "11.0.0.1": false, "[::1]:8088": true, "::1": true,
		"[2001:db8::1]:80": true, "[2001:db8:0::1]": true, "192.0.2.1:80": true, "192.0.2.2": false,
		"example.com": false, "": false, "push.example.com.evil.example": false,
	} {
		if got := p.allows(host); got != want {
			t.Errorf("allows(%q) = %v, want %v", host, got, want)
		}
	}
	if newHostPolicy(nil, false) != nil || newHostPolicy([]string{"a.example", "*"}, true) != nil {
		t.Error("no patterns or * must allow any host")
	}
	if d := newHostPolicy(nil, true); d.allows("rebind.evil.example") || !d.allows("localhost:8088") {
		t.Error("demo default is fromLoopback names")
	}
}

// failingStore's error names a file, as the key file store's does.
type failingStore struct{ keystore.KeyStore }

func (failingStore) Ping(context.Context) error {
	return errors.New("stat /srv/secret/keys.txt: no such file or directory")
}
func (failingStore) Close(context.Context) error { return nil }

func TestReadyzDetailsOnlyForTrustedCallers(t *testing.T) {
	tg := newTestGateway(t, failingStore{}, "--publish-token", "s3cret")
	for _, c := range []struct {
		remote string
		header []string
		detail bool
	}{
		{fromStranger, nil, false},
		{fromStranger, []string{"Authorization: Bearer wrong"}, false},
		{fromLoopback, []string{"X-Forwarded-For: 198.51.100.7"}, false},
		{fromLoopback, []string{"X-Real-IP: 198.51.100.7"}, false},
		{fromLoopback, nil, true},
		{fromStranger, []string{"Authorization: Bearer s3cret"}, true},
	} {
		w := tg.do("GET", "localhost:8088", "/readyz", c.remote, "", c.header...)
		body := strings.TrimSpace(w.Body.String())
		if w.Code != http.StatusServiceUnavailable {
			t.Errorf("%s %q: %d, want 503 whoever asks", c.remote, c.header, w.Code)
		}
		if got := strings.Contains(body, "keys.txt"); got != c.detail {
			t.Errorf("%s %q: detail shown %v, want %v: %s", c.remote, c.header, got, c.detail, body)
		}
		if !c.detail && body != `{"status":"unavailable"}` {
			t.Errorf("%s %q: %s", c.remote, c.header, body)
		}
	}
	// A page whose name was rebound to the loopback address is no local caller.
	if w := tg.do("GET", "rebind.evil.example", "/readyz", fromLoopback, ""); strings.Contains(w.Body.String(), "keys.txt") {
		t.Errorf("details shown to a rebound name: %s", w.Body)
	}
	ok := newTestGateway(t, keystore.NewMemory("k"))
	if w := ok.do("GET", "gw.example", "/readyz", fromStranger, ""); w.Code != http.StatusOK || strings.TrimSpace(w.Body.String()) != `{"status":"ok"}` {
		t.Errorf("ready, to a stranger: %d %s", w.Code, w.Body)
	}
	if w := ok.do("GET", "127.0.0.1:8088", "/readyz", fromLoopback, ""); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"store":"ok"`) {
		t.Errorf("ready, to loopback: %d %s", w.Code, w.Body)
	}
}

func TestMetricsOnlyForTrustedCallers(t *testing.T) {
	tg := newTestGateway(t, keystore.NewMemory("k"))
	tok := newTestGateway(t, keystore.NewMemory("k"), "--publish-token", "s3cret")
	for _, c := range []struct {
		g      *testGateway
		remote string
		header []string
		want   int
	}{
		{tg, fromLoopback, nil, http.StatusOK},
		{tg, "[::1]:40000", nil, http.StatusOK},
		{tg, fromStranger, nil, http.StatusForbidden},
		{tg, fromLoopback, []string{"X-Forwarded-For: 198.51.100.7"}, http.StatusForbidden},
		{tg, fromLoopback, []string{"Forwarded: for=198.51.100.7"}, http.StatusForbidden},
		{tg, fromLoopback, []string{"Authorization: Bearer guess"}, http.StatusUnauthorized},
		{tok, fromLoopback, nil, http.StatusOK},
		{tok, fromStranger, nil, http.StatusUnauthorized},
		{tok, fromStranger, []string{"Authorization: Bearer wrong"}, http.StatusUnauthorized},
		{tok, fromStranger, []string{"Authorization: Bearer s3cret"}, http.StatusOK},
		{tok, fromLoopback, []string{"X-Forwarded-For: 198.51.100.7", "Authorization: Bearer s3cret"}, http.StatusOK},
	} {
		w := c.g.do("GET", "[::1]:8088", "/metrics", c.remote, "", c.header...)
		if w.Code != c.want {
			t.Errorf("%s %q (token %v): %d, want %d", c.remote, c.header, c.g.cfg.PublishToken != "", w.Code, c.want)
		}
		if (w.Code == http.StatusOK) != strings.Contains(w.Body.String(), "wspubsub_rejections_total") {
			t.Errorf("%s %q: body %.80s", c.remote, c.header, w.Body)
		}
	}
	// DNS rebinding: a page on rebind.evil.example, now resolving to the
	// loopback address, fetches /metrics same-origin (no Origin header).
	if w := tg.do("GET", "rebind.evil.example:8088", "/metrics", fromLoopback, ""); w.Code != http.StatusForbidden {
		t.Errorf("/metrics to a rebound name: %d, want 403", w.Code)
	}
}
