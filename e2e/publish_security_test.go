package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// postPublish POSTs body to url's /publish with the given headers
// ("Name: value") and returns the status code.
func postPublish(t *testing.T, base, body string, header ...string) int {
	t.Helper()
	req, err := http.NewRequest("POST", strings.TrimSuffix(base, "/")+"/publish", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range header {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// sameHostProxies are reverse proxies on loopback in front of the gateway,
// as in the usual deployment: one adds X-Forwarded-For (net/http/httputil's
// default), one relays the request bare.
func sameHostProxies(t *testing.T, s *stack) map[string]string {
	t.Helper()
	target, _ := url.Parse("http://" + s.gw.Addr().String())
	forwarding := httptest.NewServer(httputil.NewSingleHostReverseProxy(target))
	bare := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }})
	t.Cleanup(forwarding.Close)
	t.Cleanup(bare.Close)
	return map[string]string{"X-Forwarded-For proxy": forwarding.URL, "bare proxy": bare.URL}
}

// Behind a reverse proxy on the same host every request reaches the
// gateway from loopback: a request relayed from anywhere must not publish.
func TestPublishRelayedBySameHostProxyNeedsToken(t *testing.T) {
	const ct = "Content-Type: application/json"
	s := newStack(t, []string{"--publish-token", "s3cret"}, demoKey)
	c := mustDial(t, s.url(demoKey))
	waitLive(t, s, 1)
	direct := s.httpURL("")
	proxies := sameHostProxies(t, s)
	for name, via := range proxies {
		if code := postPublish(t, via, envelope(`{"via":"`+name+`"}`, demoKey), ct); code != http.StatusUnauthorized {
			t.Errorf("%s without token: %d, want 401", name, code)
		}
		if code := postPublish(t, via, envelope(`{"via":"`+name+`"}`, demoKey), ct, "Authorization: Bearer wrong"); code != http.StatusUnauthorized {
			t.Errorf("%s with a wrong token: %d, want 401", name, code)
		}
	}
	if code := postPublish(t, direct, envelope(`{"direct":1}`, demoKey), ct); code != http.StatusUnauthorized {
		t.Errorf("loopback without token, token configured: %d, want 401", code)
	}
	// CSRF: what a page on another origin can send with mode:"no-cors".
	if code := postPublish(t, direct, envelope(`{"csrf":1}`, demoKey), "Content-Type: text/plain", "Origin: https://evil.example", "Authorization: Bearer s3cret"); code != http.StatusForbidden {
		t.Errorf("foreign origin: %d, want 403", code)
	}
	if code := postPublish(t, direct, envelope(`{"csrf":2}`, demoKey), "Content-Type: text/plain", "Authorization: Bearer s3cret"); code != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain: %d, want 415", code)
	}
	c.expectNothing(300 * time.Millisecond)

	if code := postPublish(t, proxies["X-Forwarded-For proxy"], envelope(`{"with":"token"}`, demoKey), ct, "Authorization: Bearer s3cret"); code != http.StatusAccepted {
		t.Fatalf("through the proxy with the token: %d, want 202", code)
	}
	c.expect(`{"data":{"with":"token"}}`)

	// Without a token configured, only a direct loopback caller publishes;
	// a request the proxy marked as relayed does not.
	s2 := newStack(t, nil, demoKey)
	c2 := mustDial(t, s2.url(demoKey))
	waitLive(t, s2, 1)
	if code := postPublish(t, sameHostProxies(t, s2)["X-Forwarded-For proxy"], envelope(`{"relayed":1}`, demoKey), ct); code != http.StatusForbidden {
		t.Errorf("relayed, no token configured: %d, want 403", code)
	}
	c2.expectNothing(300 * time.Millisecond)
	if code := postPublish(t, s2.httpURL(""), envelope(`{"local":1}`, demoKey), ct); code != http.StatusAccepted {
		t.Fatalf("direct loopback, no token configured: %d, want 202", code)
	}
	c2.expect(`{"data":{"local":1}}`)
}

// DNS rebinding: a page on rebind.evil.example whose name now resolves to
// the gateway is same-origin with it (Host and Origin agree), so only
// --allowed-hosts stops it — on the raw WebSocket path too.
func TestRebindWebSocketUpgradeRefusedByAllowedHosts(t *testing.T) {
	s := newStack(t, []string{"--allowed-hosts", "localhost,127.0.0.1"}, demoKey)
	addr := s.gw.Addr().String()
	_, port, _ := strings.Cut(addr, ":")
	rebind := "rebind.evil.example:" + port

	d := ws.Dialer{Timeout: patience, Host: rebind,
		Header: ws.HandshakeHeaderHTTP(http.Header{"Origin": {"http://" + rebind}})}
	conn, _, _, err := d.Dial(context.Background(), s.url(demoKey))
	if err == nil {
		conn.Close()
		t.Fatal("WebSocket upgrade with Host and Origin rebind.evil.example got 101")
	}
	var se ws.StatusError
	if !errors.As(err, &se) || int(se) != http.StatusMisdirectedRequest {
		t.Errorf("refusal: %v, want HTTP 421", err)
	}

	// The net/http routes: EventSource on the client path, and /publish.
	req, _ := http.NewRequest("GET", s.url(demoKey), nil)
	req.URL.Scheme = "http"
	req.Host = rebind
	req.Header.Set("Origin", "http://"+rebind)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("EventSource with Host %s: %d, want 421", rebind, resp.StatusCode)
	}
	req, _ = http.NewRequest("POST", s.httpURL("/publish"), strings.NewReader(envelope(`{"x":1}`, demoKey)))
	req.Host = rebind
	req.Header.Set("Origin", "http://"+rebind)
	req.Header.Set("Content-Type", "application/json")
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Errorf("/publish with Host %s: %d, want 421", rebind, resp.StatusCode)
	}
	if got := testutil.ToFloat64(s.gw.Metrics().Rejections.WithLabelValues("host")); got != 3 {
		t.Errorf(`wspubsub_rejections_total{reason="host"} = %v, want 3`, got)
	}

	// The gateway's own names still work.
	c := mustDial(t, s.url(demoKey))
	waitLive(t, s, 1)
	s.publish(envelope(`{"ok":1}`, demoKey))
	c.expect(`{"data":{"ok":1}}`)
}
