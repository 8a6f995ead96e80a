package gateway

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/eventsource"
	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/longpoll"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
	"github.com/wspubsub/wspubsub/internal/web"
	"github.com/wspubsub/wspubsub/internal/websocket"
)

// routes builds the gateway's HTTP surface.
func (g *Gateway) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(g.cfg.Path, g.serveClient)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", g.serveReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(g.metrics.Registry, promhttp.HandlerOpts{}))
	if g.cfg.PublishAPI {
		mux.HandleFunc("POST /publish", g.servePublish)
	}
	web.Register(mux, web.DemoConfig{Path: g.cfg.Path, DemoKey: g.demoKey(), Publish: g.demo && g.cfg.PublishAPI})
	return mux
}

func (g *Gateway) demoKey() string {
	if g.demo {
		return config.DemoKey
	}
	return ""
}

// KeyFromQuery extracts a client key from a raw query string: a key=
// parameter if there is one, else everything before the first '&' (the
// original used the whole query string; jQuery appends &_=<timestamp>).
func KeyFromQuery(raw string) string {
	first := ""
	for i, part := range strings.Split(raw, "&") {
		if v, ok := strings.CutPrefix(part, "key="); ok {
			return unescape(v)
		}
		if i == 0 && !isCacheBuster(part) {
			first = part
		}
	}
	return unescape(first)
}

func isCacheBuster(p string) bool {
	v, ok := strings.CutPrefix(p, "_=")
	if !ok || v == "" {
		return false
	}
	return strings.Trim(v, "0123456789") == ""
}

func unescape(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

// serveClient is the client endpoint, one URL for every transport: it
// checks origin and limits, answers CORS, then hands the request to the
// transport it asks for — WebSocket upgrade, EventSource (Accept:
// text/event-stream), bullet long-polling (X-Socket-Transport: xhrPolling)
// — or, for POST, takes client text.
func (g *Gateway) serveClient(w http.ResponseWriter, r *http.Request) {
	if g.originRefused(r.Header.Get("Origin"), r.Host, r.RemoteAddr) {
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	g.cors(w, r)
	key := KeyFromQuery(r.URL.RawQuery)
	var serve func(http.ResponseWriter, *http.Request, string)
	switch {
	case r.Method == http.MethodOptions:
		w.WriteHeader(http.StatusNoContent)
		return
	case r.Method == http.MethodPost:
		g.serveClientText(w, r, key)
		return
	case websocket.IsUpgrade(r):
		serve = g.ws.Serve
	case eventsource.Wants(r):
		serve = g.es.Serve
	case longpoll.Wants(r):
		serve = g.lp.Serve
	default:
		g.metrics.Rejections.WithLabelValues(metrics.RejectBadRequest).Inc()
		http.Error(w, "expected a WebSocket upgrade, an EventSource (Accept: text/event-stream) or a poll (X-Socket-Transport: xhrPolling)", http.StatusBadRequest)
		return
	}
	// A poll of a connection that already exists does not count again.
	existing := longpoll.Wants(r) && g.lp.Lookup(r, key) != nil
	if !existing && g.overLimit(r.RemoteAddr) {
		w.Header().Set("Retry-After", "5")
		http.Error(w, "connection limit reached", http.StatusServiceUnavailable)
		return
	}
	serve(w, r, key)
}

// originRefused and overLimit are the client endpoint's admission checks,
// shared by the net/http path and the raw WebSocket path (sniff.go); each
// logs and counts a refusal.
func (g *Gateway) originRefused(origin, host, remote string) bool {
	if g.originAllowedFor(origin, host) {
		return false
	}
	g.metrics.Rejections.WithLabelValues(metrics.RejectOrigin).Inc()
	g.log.Warn("connection refused: origin not allowed", "origin", origin, "remote", remote)
	return true
}

func (g *Gateway) overLimit(remote string) bool {
	if g.ws.Open()+g.es.Open()+g.lp.Open() < g.maxConns {
		return false
	}
	g.metrics.Rejections.WithLabelValues(metrics.RejectLimit).Inc()
	g.log.Warn("connection refused: connection limit reached", "limit", g.maxConns, "remote", remote)
	return true
}

// cors answers cross-origin requests that originAllowed admitted: bullet
// pages are usually served from another origin than the gateway.
func (g *Gateway) cors(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	h.Set("Access-Control-Expose-Headers", "X-Wspubsub-Close-Code, X-Wspubsub-Close-Reason")
	if r.Method == http.MethodOptions {
		h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
		h.Set("Access-Control-Allow-Headers", "X-Socket-Transport, Content-Type, Last-Event-ID, Cache-Control, X-Requested-With")
		h.Set("Access-Control-Max-Age", "600")
	}
}

// serveClientText takes text a client POSTs (bullet's send() for
// EventSource and polling). It needs a live connection of the key on this
// gateway — the connection was authenticated once, so the POST is neither
// re-authenticated nor re-announced. The reply body ("heartbeat message"
// for "ping") is delivered to the page by bullet.
func (g *Gateway) serveClientText(w http.ResponseWriter, r *http.Request, key string) {
	sess := g.lp.Lookup(r, key)
	if sess == nil {
		if live := g.hub.Sessions(key); len(live) > 0 {
			sess = live[0]
		}
	}
	if sess == nil {
		longpoll.WriteClose(w, session.CloseUnauthorized, "no open connection for this key")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(g.cfg.MaxClientBytes)))
	if err != nil {
		longpoll.WriteClose(w, session.CloseTooBig, "message too big")
		return
	}
	reply, err := g.hub.ClientText(sess, body)
	if errors.Is(err, hub.ErrRateLimited) {
		longpoll.WriteClose(w, session.CloseRateLimited, "rate limited")
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(reply)
}

// originAllowed admits requests without an Origin (non-browser clients),
// same-origin requests, and origins matching --allowed-origins.
func (g *Gateway) originAllowed(r *http.Request) bool {
	return g.originAllowedFor(r.Header.Get("Origin"), r.Host)
}

func (g *Gateway) originAllowedFor(origin, host string) bool {
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, host) {
		return true
	}
	for _, a := range g.cfg.AllowedOrigins {
		switch {
		case a == "*":
			return true
		case strings.HasPrefix(a, "*."):
			if strings.HasSuffix(strings.ToLower(u.Hostname()), strings.ToLower(a[1:])) {
				return true
			}
		case strings.Contains(a, "://"):
			if strings.EqualFold(strings.TrimSuffix(a, "/"), u.Scheme+"://"+u.Host) {
				return true
			}
		default:
			if strings.EqualFold(a, u.Host) || strings.EqualFold(a, u.Hostname()) {
				return true
			}
		}
	}
	return false
}

func (g *Gateway) serveReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	status, code := map[string]string{"broker": "ok", "store": "ok"}, http.StatusOK
	if !g.broker.Ready() {
		status["broker"], code = "not subscribed", http.StatusServiceUnavailable
	}
	if err := g.store.Ping(ctx); err != nil {
		status["store"], code = err.Error(), http.StatusServiceUnavailable
	}
	writeJSON(w, code, status)
}

// publishParser validates envelopes posted to /publish before they are
// handed to the broker, so the caller learns what is wrong.
type publishParser struct {
	mu sync.Mutex
	p  envelope.Parser
}

func (g *Gateway) servePublish(w http.ResponseWriter, r *http.Request) {
	if !g.publishAllowed(r) {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "publish is open to loopback callers or with --publish-token"})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(g.cfg.MaxMessageBytes)))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": envelope.ReasonTooLarge})
			return
		}
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "reading body: " + err.Error()})
		return
	}
	g.pub.mu.Lock()
	_, err = g.pub.p.Parse(body)
	g.pub.mu.Unlock()
	if err != nil {
		var e *envelope.Error
		reason := "invalid"
		if errors.As(err, &e) {
			reason = e.Reason
		}
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": reason, "detail": err.Error()})
		return
	}
	if err := g.broker.Publish(r.Context(), g.cfg.Channel, body); err != nil {
		g.log.Warn("publish API: broker publish failed", "err", err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "broker unavailable"})
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "accepted"})
}

func (g *Gateway) publishAllowed(r *http.Request) bool {
	if tok := g.cfg.PublishToken; tok != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if ok && subtle.ConstantTimeCompare([]byte(got), []byte(tok)) == 1 {
			return true
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
