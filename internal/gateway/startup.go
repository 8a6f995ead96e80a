package gateway

import (
	"context"
	"log/slog"
	"time"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/keystore"
)

// storeRetry is how often a key store unreachable at start-up is tried
// again, until it answers (then /readyz and admissions tell the rest).
const storeRetry = 5 * time.Second

// routeRedisLogs sends go-redis's own lines through the gateway's logger
// (rate-limited, warn level) when the gateway uses Redis. go-redis has one
// logger per process, so this is set here, at start-up, rather than at
// package init: a program embedding the gateway keeps its own otherwise.
func routeRedisLogs(cfg config.Serve, log *slog.Logger) {
	if cfg.RedisURL != "" {
		broker.RouteClientLogs(log)
	}
}

// checkStore pings the key store once at start-up (within
// --key-check-timeout). An unreachable store does not stop the gateway
// (it may come up later): that is said once, clearly, with what clients
// get meanwhile; then it is tried every retry until it answers, which is
// said once too.
func (g *Gateway) checkStore(ctx context.Context, retry time.Duration) {
	err := g.pingStore(ctx)
	if err == nil || ctx.Err() != nil {
		return
	}
	reason := keystore.Reason(err)
	g.log.Warn("key store unreachable at start-up; the gateway keeps starting and clients are refused with 1013 (try again later) until it answers",
		"store", g.storeName(), "reason", reason)
	g.log.Debug("key store error", "err", err)
	t := time.NewTicker(retry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := g.pingStore(ctx)
		if err == nil {
			g.log.Info("key store reachable", "store", g.storeName())
			return
		}
		// Said again only when the reason changes (a server that came up
		// but refuses the credentials, say).
		if r := keystore.Reason(err); r != reason && ctx.Err() == nil {
			reason = r
			g.log.Warn("key store still unavailable", "store", g.storeName(), "reason", reason)
			g.log.Debug("key store error", "err", err)
		}
	}
}

func (g *Gateway) pingStore(ctx context.Context) error {
	d := g.cfg.KeyCheckTimeout
	if d <= 0 {
		d = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return g.store.Ping(ctx)
}

// storeName says which store this is, without credentials.
func (g *Gateway) storeName() string {
	if k, ok := g.store.(interface{ Kind() string }); ok { // a store that names itself (JWKS, auth hook)
		return k.Kind()
	}
	switch {
	case g.cfg.MongoURI != "":
		return "MongoDB at " + keystore.RedactURI(g.cfg.MongoURI)
	case g.cfg.KeysFile != "":
		return "key file " + g.cfg.KeysFile
	}
	return "configured key store"
}

// brokerKind is "memory" for the in-process broker, else "redis": the
// demo page's publish box says which carries its messages.
func (g *Gateway) brokerKind() string {
	if _, ok := g.broker.(*broker.Memory); ok {
		return "memory"
	}
	return "redis"
}
