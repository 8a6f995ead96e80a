// Package gateway is wspubsub's HTTP surface and its assembly: it builds the
// key store, broker, hub and transports from configuration, serves the
// client endpoint, /healthz, /readyz, /metrics, /publish and the status
// page (/status, /status.json), and runs the graceful shutdown. It must not
// route messages or touch sockets itself: that is the hub's and the
// transports' work — save accepting them (listener.go: the socket bounds;
// tls.go: with --tls-cert, the TLS handshake and the 400 to plain requests
// on the TLS port).
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wspubsub/wspubsub/internal/auth"
	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/eventsource"
	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/longpoll"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/presence"
	"github.com/wspubsub/wspubsub/internal/ratelimit"
	"github.com/wspubsub/wspubsub/internal/websocket"
)

// Gateway is one running wspubsub node.
type Gateway struct {
	cfg      config.Serve
	log      *slog.Logger
	metrics  *metrics.Metrics
	store    keystore.KeyStore
	broker   broker.Broker
	history  broker.History // nil: no history (--history-size 0)
	router   broker.Router  // nil: every node receives every message (--routing all)
	hub      *hub.Hub
	presence presence.Presence // cluster presence and the node registry (presence.go)
	ws       *websocket.Server
	es       *eventsource.Server
	lp       *longpoll.Server
	ln       *limitListener
	srv      *http.Server
	proxies  []netip.Prefix // --trusted-proxies
	pub      publishParser
	maxConns int
	demo     bool               // running on the embedded demo key store
	hosts    *hostPolicy        // --allowed-hosts; nil: any
	sampled  *ratelimit.Sampled // refusal log lines, which clients can multiply

	ctx    context.Context // lifetime of connections
	cancel context.CancelFunc

	drainer drainState // the drain between ctx's end and the shutdown (drain.go)

	statusPage *statusPage // the live status page's sampler and probes (status.go)
}

// Options lets embedders and tests supply their own backends; nil fields
// are built from the configuration.
type Options struct {
	Store  keystore.KeyStore
	Broker broker.Broker
	Logger *slog.Logger
}

// New builds a gateway and binds its listener (so Addr is known before Run).
func New(cfg config.Serve, opt Options) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	g := &Gateway{cfg: cfg, log: log, metrics: metrics.New(), sampled: ratelimit.NewSampled(log, hub.LogRate, hub.LogBurst)}
	g.pub.p.MaxBytes = cfg.MaxMessageBytes
	g.ctx, g.cancel = context.WithCancel(context.Background())

	var err error
	var tlsCfg *tls.Config // --tls-cert (tls.go): a pair that does not load fails the start before anything is dialled
	if cfg.TLSCert != "" {
		if tlsCfg, err = tlsConfig(cfg, log); err != nil {
			return nil, err
		}
	}
	g.demo = opt.Store == nil && cfg.Demo()
	g.hosts = newHostPolicy(cfg.AllowedHosts, g.demo)
	if g.store = opt.Store; g.store == nil {
		if g.store, err = newStore(cfg, log); err != nil {
			return nil, err
		}
	}
	if g.demo && len(cfg.AllowedHosts) == 0 {
		log.Info("demo mode: serving loopback host names only (set --allowed-hosts to widen)", "allowed_hosts", strings.Join(loopbackHosts, ","))
	}
	routeRedisLogs(cfg, log) // startup.go: go-redis's lines through slog
	if g.broker = opt.Broker; g.broker == nil {
		g.broker, err = newBroker(cfg, log, g.metrics, func() { g.hub.Resync(g.ctx) }, g.forward)
		if err != nil {
			return nil, err
		}
	}
	if cfg.HistorySize > 0 {
		g.history = historyOf(g.broker)
	}
	var watcher hub.Watcher
	if rb, ok := g.broker.(*broker.Redis); ok && rb.Routes() {
		g.router, watcher = rb, rb
		g.metrics.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wspubsub_routed_keys", Help: "Keys whose sharded channels this node subscribes to (--routing keys).",
		}, func() float64 { return float64(rb.Watched()) }))
	}
	if g.presence, err = newPresence(cfg, log, g.metrics, g.advertiseAddr, func() int { return g.hub.Live() }); err != nil {
		return nil, err
	}
	var keyPresence hub.Presence // per key only with --presence: it costs per online key
	if cfg.Presence {
		keyPresence = g.presence
	}
	g.hub = hub.New(hub.Config{
		Store: g.store, Auth: auth.Of(g.store), Events: g.broker, History: g.history, Router: watcher, Metrics: g.metrics, Logger: log,
		NodeID: cfg.NodeID, ConnectedChannel: cfg.ConnectedChannel, DisconnectedChannel: cfg.DisconnectedChannel,
		JSONEvents: cfg.EventFormat == "json", MaxMessageBytes: cfg.MaxMessageBytes,
		KeyCheckTimeout: admissionTimeout(cfg), RecheckInterval: recheck(cfg.RecheckInterval),
		KeepAliveInterval: cfg.PingInterval, UpstreamChannel: cfg.UpstreamChannel,
		ClientRate: cfg.ClientRate, ClientBurst: cfg.ClientBurst,
		MaxSessionsPerKey: cfg.MaxSessionsPerKey, MaxSessionsPerAddr: cfg.MaxSessionsPerAddr,
		AuthFailRate: cfg.AuthFailRate, AuthFailBurst: cfg.AuthFailBurst, Presence: keyPresence,
	})
	g.newStatusPage()
	g.ws = websocket.NewServer(g.ctx, websocket.Config{
		Hub: g.hub, Metrics: g.metrics, Logger: log,
		IdleTimeout: cfg.IdleTimeout, WriteTimeout: cfg.WriteTimeout,
		QueueBytes: cfg.QueueBytes, MaxFrameBytes: cfg.MaxClientBytes,
		CoalesceGap: cfg.CoalesceGap, Writers: cfg.Writers,
	})
	g.es = eventsource.NewServer(eventsource.Config{
		Hub: g.hub, Metrics: g.metrics, Logger: log,
		WriteTimeout: cfg.WriteTimeout, QueueBytes: cfg.QueueBytes,
	})
	g.lp = longpoll.NewServer(g.ctx, longpoll.Config{
		Hub: g.hub, Metrics: g.metrics, Logger: log,
		PollTimeout: cfg.PollTimeout, IdleTimeout: cfg.IdleTimeout, QueueBytes: cfg.QueueBytes,
		WriteTimeout: cfg.WriteTimeout,
	})
	for _, p := range cfg.TrustedProxies {
		pfx, err := config.ParsePrefix(p)
		if err != nil {
			return nil, err
		}
		g.proxies = append(g.proxies, pfx)
	}
	g.maxConns = cfg.MaxConnections
	if g.maxConns == 0 {
		g.maxConns = fdLimit() - 256
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", cfg.Listen, err)
	}
	// Every socket counts, admitted or not; the headroom serves health
	// checks, publishes and the 503s of refused clients.
	g.ln = &limitListener{Listener: ln, max: int64(min(g.maxConns+sockHeadroom, fdLimit()-64)),
		exempt: g.trusted, refused: g.socketRefused, byAddr: map[string]int{}}
	if cfg.MaxSessionsPerAddr > 0 {
		g.ln.perAddr = cfg.MaxSessionsPerAddr + sockHeadroom
	}
	g.srv = &http.Server{
		Handler:           g.routes(),
		ReadHeaderTimeout: headerTimeout,
		// Bodies (POSTs) must arrive within this; the streaming transports
		// lift it for their requests, which have none.
		ReadTimeout:    headerTimeout,
		WriteTimeout:   3 * cfg.WriteTimeout, // the streams set their own deadlines
		IdleTimeout:    cfg.IdleTimeout,      // keep-alive connections between requests
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		TLSConfig:      tlsCfg,
	}
	return g, nil
}

// HTTP limits for every request.
const (
	headerTimeout  = 10 * time.Second
	maxHeaderBytes = 16 << 10
	sockHeadroom   = 128
)

// socketRefused counts a socket closed at accept.
func (g *Gateway) socketRefused(perAddr bool) {
	g.metrics.Rejections.WithLabelValues(metrics.RejectSocketLimit).Inc()
	if perAddr {
		g.sampled.Log(slog.LevelWarn, "socket refused at accept: too many open sockets from one address", "limit", g.ln.perAddr)
	} else {
		g.sampled.Log(slog.LevelWarn, "socket refused at accept: too many open sockets", "limit", g.ln.max)
	}
}

func recheck(d time.Duration) time.Duration {
	if d == 0 {
		return -1 // hub: disabled
	}
	return d
}

func fdLimit() int { return config.OpenFileLimit() }

func newStore(cfg config.Serve, log *slog.Logger) (keystore.KeyStore, error) {
	switch {
	case tokenAuth(cfg): // --jwt-key, --jwks-url, --auth-url (auth.go)
		return newTokenStore(cfg, log)
	case cfg.MongoURI != "":
		log.Info("key store: MongoDB", "db", cfg.MongoDB, "collection", cfg.MongoCollection, "field", cfg.MongoKeyField)
		return keystore.NewMongo(keystore.MongoConfig{URI: cfg.MongoURI, Database: cfg.MongoDB,
			Collection: cfg.MongoCollection, Field: cfg.MongoKeyField, Timeout: cfg.KeyCheckTimeout})
	case cfg.KeysFile != "":
		f, err := keystore.NewFile(cfg.KeysFile)
		if err != nil {
			return nil, err
		}
		log.Info("key store: file", "path", cfg.KeysFile, "keys", f.Len())
		return f, nil
	default:
		log.Warn("!!! DEMO MODE: no key store (--mongo-uri, --keys-file, --jwt-key, --jwks-url or --auth-url); the only valid key is the public demo key — do not expose this gateway",
			"key", config.DemoKey)
		return keystore.NewMemory(config.DemoKey), nil
	}
}

// historyOf returns b's history, when it keeps one.
func historyOf(b broker.Broker) broker.History {
	switch x := b.(type) {
	case *broker.Memory:
		return x.History() // nil unless built WithHistory
	case broker.History:
		return x
	}
	return nil
}

func historyConfig(cfg config.Serve) broker.HistoryConfig {
	return broker.HistoryConfig{Size: cfg.HistorySize, TTL: cfg.HistoryTTL, MetaTTL: cfg.HistoryMetaTTL}
}

// newBroker builds the configured broker; resync is called each time its
// subscription is (re)established (clients that resume must catch up from history),
// before any message received after it is dispatched; with --routing keys,
// forward routes the plain PUBLISHes this node receives while it holds the
// forwarding lease.
func newBroker(cfg config.Serve, log *slog.Logger, m *metrics.Metrics, resync func(), forward func(context.Context, []byte)) (broker.Broker, error) {
	if cfg.RedisURL == "" {
		log.Warn("broker: in-process (no --redis-url); publish with POST /publish or `wspubsub publish`")
		b := broker.NewMemory(cfg.Channel)
		if cfg.HistorySize > 0 {
			b.WithHistory(historyConfig(cfg))
		}
		return b, nil
	}
	log.Info("broker: Redis", "channel", cfg.Channel, "routing", cfg.Routing, "history_size", cfg.HistorySize, "history_ttl", cfg.HistoryTTL)
	routed := cfg.Routing == "keys"
	if !routed {
		forward = nil
	}
	return broker.NewRedis(broker.RedisConfig{
		URL: cfg.RedisURL, Inbound: cfg.Channel, Logger: log, History: historyConfig(cfg),
		Routed: routed, Cluster: cfg.RedisCluster, WaitReplicas: cfg.RedisWaitReplicas, NodeID: cfg.NodeID, OnInbound: forward,
		OnProbeLost: m.ProbesLost.Inc,
		OnReconnect: m.BrokerReconnects.Inc, OnSubscribed: resync,
		OnReady: func(ok bool) {
			if ok {
				m.BrokerReady.Set(1)
			} else {
				m.BrokerReady.Set(0)
			}
		},
	})
}

// Addr is the address the gateway listens on.
func (g *Gateway) Addr() net.Addr { return g.ln.Addr() }

// Hub exposes the hub (for tests and embedders).
func (g *Gateway) Hub() *hub.Hub { return g.hub }

// Metrics exposes the gateway's metrics.
func (g *Gateway) Metrics() *metrics.Metrics { return g.metrics }

// Run serves until ctx ends, then drains (--drain-period: new clients
// refused, the live ones closed with 1012 a few at a time; SkipDrain cuts
// it short), then shuts down gracefully: stop accepting, close every
// client left with 1001 "going away", publish their disconnected events,
// all within --shutdown-timeout.
func (g *Gateway) Run(ctx context.Context) error {
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	brokerDone := make(chan error, 1)
	go func() { brokerDone <- g.broker.RunSplit(runCtx, g.hub.Dispatch, g.hub.DispatchRecorded) }()
	go g.hub.Run(runCtx)
	go g.presence.Run(runCtx) // registration, heartbeats, presence writes
	// Say at once when the key store is unreachable (startup.go).
	go g.checkStore(runCtx, storeRetry)
	// One reading of the counters a second, for /status (status.go).
	go g.statusPage.sampler.Run(runCtx)
	if m, ok := g.broker.(*broker.Memory); ok && m != nil {
		g.metrics.BrokerReady.Set(1)
	}
	if g.cfg.DebugAddr != "" {
		go g.serveDebug()
	}
	serveErr := make(chan error, 1)
	var httpLn net.Listener
	useTLS := g.srv.TLSConfig != nil // read before Serve, which sets up HTTP/2 in it
	if useTLS {
		httpLn = g.listenTLS() // every connection through crypto/tls and net/http (tls.go)
	} else {
		httpLn = g.ws.Listen(g.ln, g.cfg.Path, g.gate)
	}
	go func() { serveErr <- g.srv.Serve(httpLn) }()
	g.log.Info("wspubsub listening", "addr", g.ln.Addr().String(), "path", g.cfg.Path, "max_connections", g.maxConns, "tls", useTLS)

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("serving HTTP: %w", err)
	}
	if err == nil {
		g.drain() // --drain-period: hand the clients to the other nodes a few at a time
	}
	g.log.Info("shutting down", "connections", g.hub.Live())
	sctx, cancel := context.WithTimeout(context.Background(), g.cfg.ShutdownTimeout)
	defer cancel()
	// Stop accepting, and meanwhile close every client with 1001 (which also
	// ends held polls and event streams, so the HTTP shutdown can finish).
	_ = g.ln.Close() // the sniffer stops; net/http's listener follows
	httpDone := make(chan struct{})
	go func() { _ = g.srv.Shutdown(sctx); close(httpDone) }()
	g.hub.Shutdown(sctx) // close clients with 1001, flush events
	// Deregister: this node leaves /presence and /nodes at once.
	g.closePresence(sctx)
	<-httpDone
	g.cancel() // abandon anything still authenticating
	stopRun()
	// The broker's Run ends with its context (giving back what it holds in
	// Redis, like the forwarding lease) before its client is closed.
	select {
	case <-brokerDone:
		_ = g.broker.Close()
	case <-time.After(2 * time.Second):
		_ = g.broker.Close()
		<-brokerDone
	}
	_ = g.store.Close(sctx)
	g.log.Info("stopped")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// serveDebug serves pprof on its own listener, never on the public one.
func (g *Gateway) serveDebug() {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	host, _, _ := net.SplitHostPort(g.cfg.DebugAddr)
	if config.IsLoopbackHost(host) {
		g.log.Info("pprof listening", "addr", g.cfg.DebugAddr)
	} else {
		g.log.Warn("!!! PPROF IS PUBLIC (--debug-addr-public): anyone who can reach this address can read goroutine stacks and heap profiles (which may hold keys) — do not leave it on",
			"addr", g.cfg.DebugAddr)
	}
	if err := http.ListenAndServe(g.cfg.DebugAddr, mux); err != nil {
		g.log.Warn("pprof listener failed", "err", err)
	}
}
