package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisConfig configures the Redis broker.
type RedisConfig struct {
	// URL is redis://host:port/db; with Cluster, a comma-separated list
	// of seed addresses (redis:// URLs or host:port).
	URL     string
	Inbound string // channel backends publish on
	// Backoff bounds the wait between resubscribe attempts.
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
	// OnReconnect is called each time the subscription is lost.
	OnReconnect func()
	// OnReady is called with the subscription state when it changes.
	OnReady func(bool)
	// OnSubscribed is called each time the subscription is established:
	// after a loss, messages published meanwhile were missed; at start,
	// clients admitted before it (their history read) missed what was
	// published in between. Only the history has those. It runs on Run's
	// goroutine, before any message received after the subscription is
	// dispatched.
	OnSubscribed func()
	// History turns on the per-key history (Size > 0).
	History HistoryConfig
	// Routed turns on per-key routing (route.go): messages travel on each
	// key's sharded channel, and this node subscribes to its keys' only.
	Routed bool
	// ProbeInterval is how often each subscription connection of the
	// routed mode is probed (a probe must come back within two) [5s];
	// OnProbeLost is called for each connection dropped for that.
	ProbeInterval time.Duration
	OnProbeLost   func()
	// WaitReplicas, in a cluster, acknowledges a recorded message only
	// once that many replicas of each master involved have it (WAIT, at
	// most WaitTimeout): a failover then loses no acknowledged message.
	WaitReplicas int
	WaitTimeout  time.Duration
	// Cluster treats URL as the seeds of a Redis Cluster (needs Routed:
	// sharded pub/sub spreads the traffic over the shards).
	Cluster bool
	// NodeID names this node in the forwarding lease and its probe
	// channels (with a random suffix: two processes given the same id
	// still hold distinct leases and probes).
	NodeID string
	// OnInbound, with Routed, receives the plain PUBLISHes on Inbound while
	// this node holds the forwarding lease; it must route them (parse,
	// then Record or Deliver). Called from one goroutine.
	OnInbound func(ctx context.Context, msg []byte)
}

// Redis subscribes to the inbound channel with SUBSCRIBE and publishes events
// with PUBLISH over a pooled client.
type Redis struct {
	cfg     RedisConfig
	client  redis.UniversalClient
	cluster *redis.ClusterClient // client, with cfg.Cluster
	ready   atomic.Bool
	loaded  atomic.Bool // the history functions were loaded (a Redis restart may lose them: fcall reloads)
	route   *router     // nil unless cfg.Routed
	// dispatchMu makes the handler's calls one at a time: the routed mode
	// receives on one connection per server.
	dispatchMu sync.Mutex
	mute       func() bool // tests: drop every message received (routed mode)
	instance   string      // NodeID and a random suffix: this process in leases and probe channels
	// addr is where Redis is, for log lines: host:port (a cluster's
	// seeds, comma-separated), never the URL (it may hold a password).
	addr string
	// reached: a subscription was confirmed once. Until then a failure is
	// "cannot reach Redis" (logged once, then every unreachableEvery),
	// not a lost subscription.
	reached     atomic.Bool
	unreachable *lineLimiter
	// persistenceChecked: the start-up warning about Redis persistence
	// (checkPersistence, redis_history.go) was given or found needless.
	persistenceChecked atomic.Bool
	records            recordQueue // concurrent Records, batched (redis_history_batch.go)
	// sub is RunSplit's subscription connection (unrouted), closed by
	// Close: it is dialled apart from the client's pools.
	sub    atomic.Pointer[subConn]
	closed atomic.Bool
}

// unreachableEvery is how often "cannot reach Redis" is repeated while
// Redis has never answered.
const unreachableEvery = 30 * time.Second

// NewRedis parses the URL and creates the client; it does not connect yet.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	if cfg.Cluster && !cfg.Routed {
		return nil, errors.New("a Redis Cluster needs per-key routing (sharded pub/sub)")
	}
	client, err := NewClient(cfg.URL, cfg.Cluster, 0)
	if err != nil {
		return nil, err
	}
	r := &Redis{client: client, unreachable: newLineLimiter(unreachableEvery, time.Now)}
	r.cluster, _ = client.(*redis.ClusterClient)
	if r.cluster != nil {
		r.addr = strings.Join(r.cluster.Options().Addrs, ",")
	} else if c, ok := client.(*redis.Client); ok {
		r.addr = c.Options().Addr
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 50 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.OnReconnect == nil {
		cfg.OnReconnect = func() {}
	}
	if cfg.OnReady == nil {
		cfg.OnReady = func(bool) {}
	}
	if cfg.WaitTimeout <= 0 {
		cfg.WaitTimeout = time.Second
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 5 * time.Second
	}
	if cfg.OnProbeLost == nil {
		cfg.OnProbeLost = func() {}
	}
	if cfg.OnSubscribed == nil {
		cfg.OnSubscribed = func() {}
	}
	r.cfg = cfg
	r.instance = fmt.Sprintf("%s-%08x", cfg.NodeID, rand.Uint32())
	if cfg.Routed {
		r.route = newRouter()
	}
	return r, nil
}

func (r *Redis) setReady(v bool) {
	if v {
		r.reached.Store(true)
	}
	if r.ready.Swap(v) != v {
		r.cfg.OnReady(v)
	}
}

// RecordedChannel is where the history functions publish recorded messages
// (with their ids) without per-key routing: a channel apart from inbound,
// which anyone may PUBLISH on, so that only the history's ids are trusted.
func RecordedChannel(inbound string) string { return "wspubsub:r:{" + inbound + "}" }

// Run implements Broker.
func (r *Redis) Run(ctx context.Context, h Handler) error { return r.RunSplit(ctx, h, h) }

// RunSplit implements Broker. On any connection error it marks itself not
// ready, waits a capped, fully jittered exponential backoff, then dials
// and subscribes again (subConn); connected clients are not touched
// meanwhile.
func (r *Redis) RunSplit(ctx context.Context, plain, recorded Handler) error {
	if r.route != nil {
		// Only gateways and the functions write the sharded channels;
		// plain PUBLISHes reach the forwarder (OnInbound), which parses
		// them anew.
		return r.runRouted(ctx, recorded)
	}
	recCh := RecordedChannel(r.cfg.Inbound)
	channels := []string{r.cfg.Inbound, recCh}
	sub := newSubConn(r.client.(*redis.Client).Options(), 15*time.Second, channels...)
	defer sub.close()
	r.sub.Store(sub) // Close closes it
	if r.closed.Load() {
		return nil
	}
	stop := context.AfterFunc(ctx, sub.close)
	defer stop()
	defer r.setReady(false)

	// The subscription is up once every channel is confirmed: they come
	// from one SUBSCRIBE, so no message comes between them, and resync
	// runs before any recorded one.
	confirmed := make([]bool, len(channels))
	nconfirmed := 0
	attempt := 0
	for {
		ev, err := sub.receive(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if sub.isClosed() { // Close
				return nil
			}
			if errors.Is(err, errQuiet) {
				// Quiet channel: prove the connection is alive.
				if err = sub.ping(); err == nil {
					continue
				}
			}
			switch {
			case !r.reached.Load():
				r.cannotReach(err)
			case r.ready.Load() || attempt == 0:
				r.cfg.Logger.Warn("redis subscription lost; reconnecting", "channel", r.cfg.Inbound, "err", err)
			}
			r.setReady(false) // (receive and ping have dropped the connection)
			clear(confirmed)
			nconfirmed = 0
			r.cfg.OnReconnect()
			if !sleep(ctx, backoff(attempt, r.cfg.MinBackoff, r.cfg.MaxBackoff)) {
				return nil
			}
			attempt++
			continue
		}
		switch ev.kind {
		case subConfirmed:
			if confirmed[ev.channel] {
				clear(confirmed) // subscribed anew without an error seen: a new round
				nconfirmed = 0
			}
			confirmed[ev.channel] = true
			if nconfirmed++; nconfirmed < len(channels) {
				continue
			}
			switch {
			case attempt > 0 && !r.reached.Load():
				r.cfg.Logger.Info("redis reached; subscribed", "addr", r.addr, "channel", r.cfg.Inbound, "attempts", attempt)
			case attempt > 0:
				r.cfg.Logger.Info("redis subscription restored", "channel", r.cfg.Inbound, "attempts", attempt)
			}
			attempt = 0
			// Backends calling FCALL need the functions even when no
			// gateway has recorded anything since Redis restarted.
			if err := r.loadHistory(ctx); err != nil {
				r.cfg.Logger.Warn("redis: history functions not loaded", "err", err)
			}
			r.setReady(true)
			r.cfg.OnSubscribed()
		case subMessage:
			// A view into the reader's buffer: Handler must not keep or
			// modify payload (the Handler contract).
			if ev.channel == 1 {
				recorded(ev.payload)
			} else {
				plain(ev.payload)
			}
		}
	}
}

// cannotReach logs that Redis has not answered yet: once, then at most
// every unreachableEvery (with the attempts held back meanwhile).
func (r *Redis) cannotReach(err error) {
	ok, held := r.unreachable.allow("cannot reach")
	if !ok {
		return
	}
	args := []any{"err", err}
	if held > 0 {
		args = append(args, "failed_attempts_since_last_line", held)
	}
	r.cfg.Logger.Warn("cannot reach Redis at "+r.addr+"; retrying", args...)
}

// clusterOptions reads a comma-separated list of seeds, each a redis://
// URL (its password and TLS settings apply to every node) or host:port.
func clusterOptions(list string) (*redis.ClusterOptions, error) {
	copt := &redis.ClusterOptions{DialTimeout: 2 * time.Second, MaxRetries: 1}
	for _, seed := range strings.Split(list, ",") {
		seed = strings.TrimSpace(seed)
		if seed == "" {
			continue
		}
		if !strings.Contains(seed, "://") {
			copt.Addrs = append(copt.Addrs, seed)
			continue
		}
		opt, err := redis.ParseURL(seed)
		if err != nil {
			return nil, fmt.Errorf("parsing Redis Cluster seed: %w", URLProblem(seed, err))
		}
		if opt.DB != 0 {
			return nil, fmt.Errorf("Redis Cluster seed %q: a cluster has only database 0", redactURL(seed))
		}
		copt.Addrs = append(copt.Addrs, opt.Addr)
		copt.Username, copt.Password, copt.TLSConfig = opt.Username, opt.Password, opt.TLSConfig
	}
	if len(copt.Addrs) == 0 {
		return nil, errors.New("no Redis Cluster seed address")
	}
	return copt, nil
}

// backoff returns a full-jitter delay: uniform in [0, min(max, base·2^n)].
func backoff(n int, base, max time.Duration) time.Duration {
	d := base << min(n, 20)
	if d <= 0 || d > max {
		d = max
	}
	return time.Duration(rand.Int64N(int64(d) + 1))
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Publish implements Broker.
func (r *Redis) Publish(ctx context.Context, channel string, payload []byte) error {
	if err := r.client.Publish(ctx, channel, payload).Err(); err != nil {
		return fmt.Errorf("publishing on Redis channel %q: %w", channel, err)
	}
	return nil
}

// PublishBatch publishes several messages in one pipeline (one round trip).
func (r *Redis) PublishBatch(ctx context.Context, msgs []Outgoing) error {
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, m := range msgs {
			p.Publish(ctx, m.Channel, m.Payload)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("publishing %d events on Redis: %w", len(msgs), err)
	}
	return nil
}

// Routes reports whether per-key routing is on (then r is a Router).
func (r *Redis) Routes() bool { return r.route != nil }

// Watched is the number of keys whose channels this node subscribes to.
func (r *Redis) Watched() int {
	if r.route == nil {
		return 0
	}
	return r.route.watched()
}

// Ready implements Broker.
func (r *Redis) Ready() bool { return r.ready.Load() }

// Close implements Broker.
func (r *Redis) Close() error {
	r.closed.Store(true)
	if sub := r.sub.Load(); sub != nil {
		sub.close()
	}
	return r.client.Close()
}
