package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/web"
)

// routes builds the gateway's HTTP surface; every route but /healthz
// answers only the hosts --allowed-hosts admits (hosts.go).
func (g *Gateway) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(g.cfg.Path, g.serveClient)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", g.serveReady)
	mux.Handle("GET /metrics", g.serveMetrics(promhttp.HandlerFor(g.metrics.Registry, promhttp.HandlerOpts{})))
	if g.cfg.PublishAPI {
		mux.HandleFunc("POST /publish", g.servePublish)
	}
	mux.HandleFunc("GET /presence", g.servePresence) // presence.go: /publish's callers only
	mux.HandleFunc("POST /presence", g.servePresence)
	mux.HandleFunc("GET /nodes", g.serveNodes)
	for _, path := range web.StatusPaths() { // status.go: /metrics's callers only
		mux.HandleFunc("GET "+path, g.serveStatusPage())
	}
	mux.HandleFunc("GET /status.json", g.serveStatusJSON)
	web.Register(mux, web.DemoConfig{Path: g.cfg.Path, DemoKey: g.demoKey(), Publish: g.demo && g.cfg.PublishAPI, Broker: g.brokerKind()})
	return g.checkHost(mux)
}

func (g *Gateway) demoKey() string {
	if g.demo {
		return config.DemoKey
	}
	return ""
}

// serveReady is GET /readyz: 200 when the broker is subscribed and the key
// store answers, else 503 (and 503 "draining" during a drain). Which part is down, and the store's error (it
// may name a file or a database host), is for local callers and the
// token's holders (publish.go); others get only {"status": ...}, with the
// same status code, which is all a load balancer needs.
func (g *Gateway) serveReady(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	status, code := map[string]string{"status": "ok", "broker": "ok", "store": "ok"}, http.StatusOK
	if !g.broker.Ready() {
		status["broker"], code = "not subscribed", http.StatusServiceUnavailable
	}
	if err := g.store.Ping(ctx); err != nil {
		// A short reason: the driver's error can hold its whole topology.
		status["store"], code = keystore.Reason(err), http.StatusServiceUnavailable
	}
	if code != http.StatusOK {
		status["status"] = "unavailable"
	}
	if g.hub.Draining() { // a deploy: the load balancer must send clients elsewhere
		status["status"], code = "draining", http.StatusServiceUnavailable
	}
	if !g.identify(r).trustedReader() {
		status = map[string]string{"status": status["status"]}
	}
	writeJSON(w, code, status)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
