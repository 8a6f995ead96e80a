package gateway

import (
	"log/slog"
	"net/http"
	"net/netip"
	"strings"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/metrics"
)

// loopbackHosts is the --allowed-hosts default in demo mode.
var loopbackHosts = []string{"localhost", "*.localhost", "127.0.0.0/8", "::1"}

// hostPolicy is --allowed-hosts compiled: the Host header values the
// gateway serves, a defence against DNS rebinding (a page on
// rebind.evil.example whose name now resolves to the gateway is
// same-origin with it as far as the browser and the Origin check go).
// A nil policy allows any host.
type hostPolicy struct {
	names    map[string]bool
	suffixes []string // ".example.com" for *.example.com
	nets     []netip.Prefix
}

// newHostPolicy compiles patterns (validated by config.Serve.Validate);
// none means any host, or loopback names only in demo mode.
func newHostPolicy(patterns []string, demo bool) *hostPolicy {
	if len(patterns) == 0 {
		if !demo {
			return nil
		}
		patterns = loopbackHosts
	}
	p := &hostPolicy{names: map[string]bool{}}
	for _, s := range patterns {
		s = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), "."))
		switch {
		case s == "*":
			return nil
		case strings.HasPrefix(s, "*."):
			p.suffixes = append(p.suffixes, s[1:])
		case strings.Contains(s, "/"):
			if n, err := config.ParsePrefix(s); err == nil {
				p.nets = append(p.nets, n)
			}
		default:
			s = strings.Trim(s, "[]")
			if ip, err := netip.ParseAddr(s); err == nil {
				s = ip.Unmap().String() // one spelling of each address
			}
			p.names[s] = true
		}
	}
	return p
}

func (p *hostPolicy) allows(host string) bool {
	if p == nil {
		return true
	}
	h := config.HostOnly(host)
	if h == "" {
		return false
	}
	if ip, err := netip.ParseAddr(h); err == nil {
		ip = ip.Unmap()
		if p.names[ip.String()] {
			return true
		}
		for _, n := range p.nets {
			if n.Contains(ip) {
				return true
			}
		}
		return false
	}
	if p.names[h] {
		return true
	}
	for _, s := range p.suffixes {
		if strings.HasSuffix(h, s) {
			return true
		}
	}
	return false
}

// hostAllowed reports whether a request's Host header (with or without
// port) is one --allowed-hosts admits. Like originRefused it counts and
// logs a refusal (wspubsub_rejections_total{reason="host"}), so callers
// only answer: 421 Misdirected Request. It is the check of every route but
// /healthz, the raw WebSocket path included.
func (g *Gateway) hostAllowed(host string) bool {
	return !g.hostRefused(host, "")
}

func (g *Gateway) hostRefused(host, remote string) bool {
	if g.hosts.allows(host) {
		return false
	}
	g.metrics.Rejections.WithLabelValues(metrics.RejectHost).Inc()
	g.sampled.Log(slog.LevelWarn, "request refused: host not allowed (--allowed-hosts)", "host", host, "remote", remote)
	return true
}

// checkHost wraps the net/http routes: a Host --allowed-hosts does not
// admit gets 421 Misdirected Request, except on /healthz, which load
// balancers probe by address and which tells nothing.
func (g *Gateway) checkHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" && g.hostRefused(r.Host, r.RemoteAddr) {
			writeJSON(w, http.StatusMisdirectedRequest, map[string]string{"error": "host not allowed"})
			return
		}
		next.ServeHTTP(w, r)
	})
}
