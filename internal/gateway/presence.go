package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"runtime/debug"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/presence"
)

// Bounds of one presence request: keys asked at once (a GET's key=
// parameters or a POST's list), the bytes of a key, the POST body, and the
// time Redis is given to answer.
const (
	MaxPresenceKeys     = 1000
	maxPresenceKeyBytes = 1024
	maxPresenceBody     = 1 << 20
	presenceTimeout     = 2 * time.Second
)

// newPresence builds cluster presence: in Redis with --redis-url (a
// single server or, with --redis-cluster, a cluster; its own pooled
// client: presence writes must not queue behind the broker's),
// otherwise this node alone.
func newPresence(cfg config.Serve, log *slog.Logger, m *metrics.Metrics, addr func() string, conns func() int) (presence.Presence, error) {
	pc := presence.Config{NodeID: cfg.NodeID, Addr: addr, Version: version(), Conns: conns,
		Heartbeat: cfg.PresenceHeartbeat, Logger: log, Metrics: m}
	if cfg.RedisURL == "" {
		return presence.NewMemory(pc), nil
	}
	// One writer goroutine, plus readers of /presence and /nodes (per
	// server, on a cluster).
	rdb, err := broker.NewClient(cfg.RedisURL, cfg.RedisCluster, 4)
	if err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	return &ownedPresence{Presence: presence.NewRedis(rdb, pc), rdb: rdb}, nil
}

// ownedPresence closes the Redis client presence was given, after it.
type ownedPresence struct {
	presence.Presence
	rdb redis.UniversalClient
}

func (p *ownedPresence) Close(ctx context.Context) error {
	err := p.Presence.Close(ctx)
	return errors.Join(err, p.rdb.Close())
}

// closePresence deregisters this node at shutdown (after every Leave).
func (g *Gateway) closePresence(ctx context.Context) {
	if err := g.presence.Close(ctx); err != nil {
		g.log.Warn("presence: not deregistered; this node's entries expire within two heartbeats", "err", err)
	}
}

// advertiseAddr is this node's address in the registry: --advertise-addr,
// else the address it listens on.
func (g *Gateway) advertiseAddr() string {
	if g.cfg.AdvertiseAddr != "" {
		return g.cfg.AdvertiseAddr
	}
	if g.ln != nil {
		return g.ln.Addr().String()
	}
	return g.cfg.Listen
}

// version is the binary's module version and VCS revision, as built.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value[:min(12, len(s.Value))]
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if rev != "" {
		v += " " + rev + dirty
	}
	return v
}

// keyPresence is one key's answer.
type keyPresence struct {
	Online bool             `json:"online"`
	Conns  int              `json:"conns"`
	Nodes  []presence.Entry `json:"nodes"`
}

// readAllowed admits the callers /publish admits (publish.go): the token,
// or without one a direct loopback caller; a foreign browser origin never.
func (g *Gateway) readAllowed(w http.ResponseWriter, r *http.Request, what string) bool {
	if origin := r.Header.Get("Origin"); origin != "" && !sameOrigin(origin, r.Host) {
		g.sampled.Log(slog.LevelWarn, what+" refused: foreign origin", "origin", origin, "remote", r.RemoteAddr)
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "origin not allowed"})
		return false
	}
	if !g.publishAllowed(r) {
		g.sampled.Log(slog.LevelWarn, what+" refused: caller not admitted", "remote", r.RemoteAddr)
		g.refuseCaller(w, g.identify(r), what)
		return false
	}
	return true
}

// servePresence is GET /presence?key=K[&key=K2…] and POST /presence with
// a JSON list of keys (or {"keys":[…]}), at most MaxPresenceKeys.
func (g *Gateway) servePresence(w http.ResponseWriter, r *http.Request) {
	if !g.readAllowed(w, r, "/presence") {
		return
	}
	if !g.cfg.Presence {
		writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "presence is off",
			"detail": "start every gateway with --presence to keep which keys are online"})
		return
	}
	keys, msg := presenceKeys(w, r)
	if msg != "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": msg})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), presenceTimeout)
	defer cancel()
	found, err := g.presence.Lookup(ctx, keys)
	if err != nil {
		g.presenceFailed(w, "presence lookup failed", err)
		return
	}
	g.metrics.PresenceReads.WithLabelValues(metrics.PresenceOK).Inc()
	out := make(map[string]keyPresence, len(keys))
	for _, k := range keys {
		kp := keyPresence{Nodes: []presence.Entry{}}
		for _, e := range found[k] {
			kp.Conns += e.Conns
			kp.Nodes = append(kp.Nodes, e)
		}
		kp.Online = kp.Conns > 0
		out[k] = kp
	}
	writeJSON(w, http.StatusOK, map[string]any{"keys": out})
}

// presenceKeys reads the keys asked for; msg says what is wrong with them.
func presenceKeys(w http.ResponseWriter, r *http.Request) (keys []string, msg string) {
	if r.Method == http.MethodPost {
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			return nil, "Content-Type must be application/json"
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPresenceBody))
		if err != nil {
			return nil, "reading body: " + err.Error()
		}
		if json.Unmarshal(body, &keys) != nil {
			var obj struct {
				Keys []string `json:"keys"`
			}
			if err := json.Unmarshal(body, &obj); err != nil {
				return nil, `body must be a JSON list of keys, or {"keys":[…]}`
			}
			keys = obj.Keys
		}
	} else {
		keys = r.URL.Query()["key"]
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	switch {
	case len(keys) == 0:
		return nil, "no key asked (key=K, repeated for several)"
	case len(keys) > MaxPresenceKeys:
		return nil, fmt.Sprintf("at most %d keys per request", MaxPresenceKeys)
	}
	for _, k := range keys {
		if k == "" || len(k) > maxPresenceKeyBytes {
			return nil, fmt.Sprintf("keys must be 1 to %d bytes", maxPresenceKeyBytes)
		}
	}
	return keys, ""
}

// serveNodes is GET /nodes: the live nodes of the cluster.
func (g *Gateway) serveNodes(w http.ResponseWriter, r *http.Request) {
	if !g.readAllowed(w, r, "/nodes") {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), presenceTimeout)
	defer cancel()
	nodes, err := g.presence.Nodes(ctx)
	if err != nil {
		g.presenceFailed(w, "node registry read failed", err)
		return
	}
	g.metrics.PresenceReads.WithLabelValues(metrics.PresenceOK).Inc()
	writeJSON(w, http.StatusOK, map[string]any{"nodes": nodes})
}

func (g *Gateway) presenceFailed(w http.ResponseWriter, what string, err error) {
	g.metrics.PresenceReads.WithLabelValues(metrics.PresenceError).Inc()
	g.sampled.Log(slog.LevelWarn, what, "err", err) // never the keys
	w.Header().Set("Retry-After", "1")
	writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "presence unavailable"})
}
