package gateway

import (
	"crypto/subtle"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/metrics"
)

// caller is what a request proves about who sent it. It decides who may
// POST /publish, read /metrics and see /readyz details.
type caller int

const (
	// callerStranger proves nothing: a remote peer, a relayed request, or
	// a browser page that reached a loopback port under a foreign name.
	callerStranger caller = iota
	// callerLocal is a process on this machine talking to the gateway
	// directly: a loopback peer without Forwarded, X-Forwarded-For or
	// X-Real-IP (a reverse proxy on the same host is loopback too, so a
	// relayed request never counts) and without a bearer token.
	callerLocal
	// callerToken presented the configured --publish-token.
	callerToken
	// callerBadToken presented a bearer token that is not --publish-token
	// (or any bearer token when none is configured).
	callerBadToken
)

// forwardingHeaders mark a request relayed by a proxy.
var forwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Real-Ip"}

// identify is the one "is this a trusted local caller" check, shared by
// /publish, /readyz and /metrics.
func (g *Gateway) identify(r *http.Request) caller {
	if tok, ok := bearer(r.Header.Get("Authorization")); ok {
		want := g.cfg.PublishToken
		if want != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(want)) == 1 {
			return callerToken
		}
		return callerBadToken
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return callerStranger
	}
	for _, h := range forwardingHeaders {
		if _, ok := r.Header[h]; ok {
			return callerStranger
		}
	}
	// A request reaching a loopback port under another name than a loopback
	// one is a DNS-rebinding page (browsers send no Origin on same-origin
	// GETs, so that header cannot tell), not a local tool.
	if !config.IsLoopbackHost(r.Host) {
		return callerStranger
	}
	return callerLocal
}

// trustedReader: /metrics and /readyz details are for local callers
// and holders of the token.
func (c caller) trustedReader() bool { return c == callerLocal || c == callerToken }

// bearer extracts the token of an "Authorization: Bearer <token>" header.
func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// refuseCaller answers a caller not admitted: 401 for a wrong token, or
// when a token is configured and none was sent; 403 otherwise (a stranger
// to a gateway without a token: nothing it could send would help).
func (g *Gateway) refuseCaller(w http.ResponseWriter, c caller, what string) {
	switch {
	case c == callerBadToken:
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "wrong bearer token"})
	case g.cfg.PublishToken != "":
		w.Header().Set("WWW-Authenticate", "Bearer")
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": what + " needs Authorization: Bearer <--publish-token>"})
	default:
		writeJSON(w, http.StatusForbidden, map[string]string{"error": what + " is open to direct loopback callers only (set --publish-token to admit others)"})
	}
}

// publishParser validates envelopes posted to /publish before they are
// handed to the broker, so the caller learns what is wrong.
type publishParser struct {
	mu sync.Mutex
	p  envelope.Parser
}

// servePublish is POST /publish. Who may publish: with --publish-token,
// only a request carrying it (loopback included: behind a reverse proxy on
// the same host every request is loopback); without one, only a direct
// loopback caller (no forwarding headers). A wrong token is refused
// whoever sends it. Browsers: a foreign or "null" Origin is refused and
// the body must be Content-Type: application/json, which a cross-site
// form or no-cors fetch cannot send.
func (g *Gateway) servePublish(w http.ResponseWriter, r *http.Request) {
	if origin := r.Header.Get("Origin"); origin != "" && !sameOrigin(origin, r.Host) {
		g.sampled.Log(slog.LevelWarn, "publish refused: foreign origin", "origin", origin, "remote", r.RemoteAddr)
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "origin not allowed"})
		return
	}
	if !g.publishAllowed(r) {
		g.sampled.Log(slog.LevelWarn, "publish refused: caller not admitted", "remote", r.RemoteAddr)
		g.refuseCaller(w, g.identify(r), "publish")
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		writeJSON(w, http.StatusUnsupportedMediaType, map[string]string{"error": "Content-Type must be application/json"})
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
	idem := r.Header.Get("Idempotency-Key")
	if len(idem) > maxIdempotencyKey || strings.Trim(idem, idemChars) != "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad_idempotency_key",
			"detail": "Idempotency-Key must be at most 128 letters, digits and -_.:~"})
		return
	}
	g.publishAccepted(w, r, body, idem)
}

const (
	maxIdempotencyKey = 128
	idemChars         = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.:~"
)

// publishAccepted hands a validated message to the broker and answers 202
// once it is durable: with history on, recorded in the history of every
// recipient (and published); otherwise published.
func (g *Gateway) publishAccepted(w http.ResponseWriter, r *http.Request, body []byte, idem string) {
	if g.history == nil {
		if err := g.publishLive(r.Context(), body); err != nil {
			g.publishFailed(w, err)
			return
		}
		g.metrics.Publishes.WithLabelValues(metrics.PublishLive).Inc()
		writeJSON(w, http.StatusAccepted, map[string]string{"status": "accepted"})
		return
	}
	rec, err := g.history.Record(r.Context(), body, idem)
	if err != nil {
		g.publishFailed(w, err)
		return
	}
	status, outcome := "accepted", metrics.PublishRecorded
	switch {
	case rec.Duplicate:
		status, outcome = "duplicate", metrics.PublishDuplicate
	case rec.IDs == nil:
		outcome = metrics.PublishLive // a broadcast: no key, no history
	}
	g.metrics.Publishes.WithLabelValues(outcome).Inc()
	writeJSON(w, http.StatusAccepted, map[string]any{"status": status, "ids": rec.IDs})
}

func (g *Gateway) publishFailed(w http.ResponseWriter, err error) {
	g.metrics.Publishes.WithLabelValues(metrics.PublishFailed).Inc()
	g.sampled.Log(slog.LevelWarn, "publish API: broker publish failed", "err", err)
	w.Header().Set("Retry-After", "1")
	writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "broker unavailable"})
}

// publishAllowed: the token when one is configured, else a local caller.
func (g *Gateway) publishAllowed(r *http.Request) bool {
	switch g.identify(r) {
	case callerToken:
		return true
	case callerLocal:
		return g.cfg.PublishToken == ""
	}
	return false
}

// sameOrigin reports whether a browser's Origin is the gateway's own
// (scheme http or https, authority equal to Host). "null" is not.
func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return false
	}
	return strings.EqualFold(u.Host, host)
}

// serveMetrics is GET /metrics, for local callers and the token's holders.
func (g *Gateway) serveMetrics(metrics http.Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if c := g.identify(r); !c.trustedReader() {
			g.refuseCaller(w, c, "/metrics")
			return
		}
		metrics.ServeHTTP(w, r)
	}
}
