package gateway

import (
	"errors"
	"hash/fnv"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/eventsource"
	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/longpoll"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
	"github.com/wspubsub/wspubsub/internal/websocket"
)

// maxSIDBytes bounds the sid a polling or EventSource client names its
// connection with: it is kept for the connection's life.
const maxSIDBytes = 64

// KeyFromQuery extracts a client key from a raw query string: a key=
// parameter if there is one (a form value: decoded), else everything
// before the first '&' (the original used the whole query string; jQuery
// appends &_=<timestamp>). That bare key is returned as sent — the
// original compared it raw, "+" and %XX included — and, when it holds
// %XX escapes, decoded too ("+" kept: not a form value), for the key
// check to try when the key as sent is refused; decoded is "" otherwise.
func KeyFromQuery(raw string) (key, decoded string) {
	if v, ok := queryValue(raw, "key"); ok {
		return v, ""
	}
	first, _, _ := strings.Cut(raw, "&")
	if isCacheBuster(first) {
		return "", ""
	}
	if u, err := url.PathUnescape(first); err == nil && u != first {
		return first, u
	}
	return first, ""
}

// queryValue returns the decoded value of the first name= parameter of a
// raw query, without parsing the whole query into a map (polls are many).
func queryValue(raw, name string) (string, bool) {
	for part := range strings.SplitSeq(raw, "&") {
		if v, ok := strings.CutPrefix(part, name+"="); ok {
			return unescape(v), true
		}
	}
	return "", false
}

func isCacheBuster(p string) bool {
	v, ok := strings.CutPrefix(p, "_=")
	if !ok || v == "" {
		return false
	}
	return strings.Trim(v, "0123456789") == ""
}

// unescape decodes a key= parameter as a form value.
func unescape(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

// serveClient is the client endpoint, one URL for every transport: it
// checks origin and limits, answers CORS, establishes who the peer is, then
// hands the request to the transport it asks for — WebSocket upgrade,
// EventSource (Accept: text/event-stream), bullet long-polling
// (X-Socket-Transport: xhrPolling) — or, for POST, takes client text.
func (g *Gateway) serveClient(w http.ResponseWriter, r *http.Request) {
	if g.originRefused(r.Header.Get("Origin"), r.Host, r.RemoteAddr) {
		http.Error(w, "origin not allowed", http.StatusForbidden)
		return
	}
	g.cors(w, r)
	if r.Method == http.MethodOptions {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	peer, err := g.peerOf(r)
	if err != nil {
		g.metrics.Rejections.WithLabelValues(metrics.RejectBadRequest).Inc()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var serve func(http.ResponseWriter, *http.Request, session.Peer)
	switch {
	case r.Method == http.MethodPost:
		g.serveClientText(w, r, peer)
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
	existing := longpoll.Wants(r) && g.find(peer) != nil
	if !existing && g.overLimit(r.RemoteAddr) {
		w.Header().Set("Retry-After", "5")
		http.Error(w, "connection limit reached", http.StatusServiceUnavailable)
		return
	}
	serve(w, r, peer)
}

// peerOf establishes who a net/http client request comes from.
func (g *Gateway) peerOf(r *http.Request) (session.Peer, error) {
	addr := g.clientAddr(r.RemoteAddr, strings.Join(r.Header.Values("X-Forwarded-For"), ","), r.Header.Get("X-Real-IP"))
	p := session.Peer{Addr: addr, Origin: r.Header.Get("Origin")}
	p.Key, p.DecodedKey = KeyFromQuery(r.URL.RawQuery)
	if err := g.resumeOf(&p, r.URL.RawQuery, r.Header.Values("Last-Event-ID")); err != nil {
		return p, err
	}
	sid, _ := queryValue(r.URL.RawQuery, "sid")
	switch {
	case len(sid) > maxSIDBytes:
		return p, errors.New("sid longer than " + strconv.Itoa(maxSIDBytes) + " bytes")
	case sid != "" && strings.Trim(sid, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.~") != "":
		return p, errors.New("sid holds characters other than letters, digits and -_.~")
	case sid != "":
		p.Client = "sid:" + sid
	default:
		// Old bullet pages send no sid: their client is the browser, known
		// by address and User-Agent. A digest, so a huge User-Agent is not
		// kept for the connection's life.
		h := fnv.New64a()
		_, _ = io.WriteString(h, addr+"\x00"+r.UserAgent())
		p.Client = "ua:" + strconv.FormatUint(h.Sum64(), 36)
	}
	return p, nil
}

// gate applies the client endpoint's checks to a raw WebSocket upgrade,
// the same as serveClient's.
func (g *Gateway) gate(hs *websocket.Handshake) (session.Peer, int) {
	if !g.hostAllowed(hs.Host) {
		return session.Peer{}, http.StatusMisdirectedRequest
	}
	if g.originRefused(hs.Origin, hs.Host, hs.Remote) {
		return session.Peer{}, http.StatusForbidden
	}
	if g.overLimit(hs.Remote) {
		return session.Peer{}, http.StatusServiceUnavailable
	}
	u, err := url.ParseRequestURI(hs.URI)
	if err != nil {
		return session.Peer{}, http.StatusBadRequest
	}
	p := session.Peer{Addr: g.clientAddr(hs.Remote, hs.ForwardedFor, hs.RealIP), Origin: hs.Origin}
	p.Key, p.DecodedKey = KeyFromQuery(u.RawQuery)
	if g.resumeOf(&p, u.RawQuery, nil) != nil {
		return session.Peer{}, http.StatusBadRequest
	}
	return p, 0
}

// resumeOf sets whether and whence the client resumes: a since= parameter
// (empty: from now), or EventSource's Last-Event-ID, which browsers send by
// themselves on reconnect and which is newer than the page's since=. Only
// when the gateway keeps history; an id it does not know is a gap, told
// to the client when it connects.
func (g *Gateway) resumeOf(p *session.Peer, rawQuery string, lastEventID []string) error {
	if g.history == nil {
		return nil
	}
	since, ok := queryValue(rawQuery, "since")
	if len(lastEventID) > 0 {
		since, ok = lastEventID[0], true
	}
	if !ok {
		return nil
	}
	if len(since) > envelope.MaxIDBytes {
		return errors.New("since longer than " + strconv.Itoa(envelope.MaxIDBytes) + " bytes")
	}
	p.Resume, p.Since = true, since
	return nil
}

// clientAddr is the client's address for per-address limits: the socket's
// peer, or, when that peer is a trusted proxy (--trusted-proxies), the last
// address in X-Forwarded-For (else X-Real-IP) that is not itself a trusted
// proxy. Only parseable IPs are taken, so a forged header cannot make up
// arbitrary strings; an IPv6 client is its /64, which one subscriber
// usually holds whole.
func (g *Gateway) clientAddr(remote, forwardedFor, realIP string) string {
	ip, err := netip.ParseAddrPort(remote)
	if err != nil {
		return remote
	}
	if !g.trusted(ip.Addr()) {
		return addrKey(ip.Addr())
	}
	parts := strings.Split(forwardedFor, ",")
	for i := len(parts) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(parts[i]))
		if err != nil {
			break
		}
		if !g.trusted(a) {
			return addrKey(a)
		}
	}
	if a, err := netip.ParseAddr(strings.TrimSpace(realIP)); err == nil {
		return addrKey(a)
	}
	return addrKey(ip.Addr())
}

// addrKey names the address a client is limited by: an IPv4 address, or
// an IPv6 /64.
func addrKey(a netip.Addr) string {
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return a.String()
	}
	p, _ := a.Prefix(64)
	return p.String()
}

func (g *Gateway) trusted(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range g.proxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// originRefused and overLimit are the client endpoint's checks, shared by
// the net/http path and the raw WebSocket path; each logs and counts a
// refusal.
func (g *Gateway) originRefused(origin, host, remote string) bool {
	if g.originAllowedFor(origin, host) {
		return false
	}
	g.metrics.Rejections.WithLabelValues(metrics.RejectOrigin).Inc()
	g.sampled.Log(slog.LevelWarn, "connection refused: origin not allowed", "origin", origin, "remote", remote)
	return true
}

func (g *Gateway) overLimit(remote string) bool {
	if g.ws.Open()+g.es.Open()+g.lp.Open() < g.maxConns {
		return false
	}
	g.metrics.Rejections.WithLabelValues(metrics.RejectLimit).Inc()
	g.sampled.Log(slog.LevelWarn, "connection refused: connection limit reached", "limit", g.maxConns, "remote", remote)
	return true
}

// cors answers cross-origin requests that originRefused admitted: bullet
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
// EventSource and polling). It goes to that client's own connection on
// this gateway (matched by sid, or by address and User-Agent) — the
// connection was authenticated once, so the POST is neither
// re-authenticated nor re-announced. The reply body ("heartbeat message"
// for "ping") is delivered to the page by bullet.
func (g *Gateway) serveClientText(w http.ResponseWriter, r *http.Request, peer session.Peer) {
	sess := g.find(peer)
	if sess == nil {
		longpoll.WriteClose(w, session.CloseUnauthorized, "no open connection for this key")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(g.cfg.MaxClientBytes)))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		longpoll.WriteClose(w, session.CloseTooBig, "message too big")
		return
	case err != nil:
		http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !utf8.Valid(body) {
		// As a WebSocket text frame that is not UTF-8 (1007): refused,
		// not repaired on the upstream channel, and the connection ends.
		sess.Close(session.CloseInvalidData, "invalid UTF-8")
		longpoll.WriteClose(w, session.CloseInvalidData, "invalid UTF-8")
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

// find is the HTTP-transport connection of peer's client: by its key as
// sent, else decoded — the spelling its key check accepted (KeyFromQuery).
func (g *Gateway) find(peer session.Peer) *session.Session {
	if s := g.hub.Find(peer.Key, peer.Client); s != nil || peer.DecodedKey == "" {
		return s
	}
	return g.hub.Find(peer.DecodedKey, peer.Client)
}

// originAllowedFor admits requests without an Origin (non-browser
// clients), same-origin requests, and origins matching --allowed-origins.
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
