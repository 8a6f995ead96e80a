package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
)

// RedisConfig configures the Redis broker.
type RedisConfig struct {
	URL     string // redis://host:port/db
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
}

// Redis subscribes to the inbound channel with SUBSCRIBE and publishes events
// with PUBLISH over a pooled client.
type Redis struct {
	cfg    RedisConfig
	client *redis.Client
	ready  atomic.Bool
}

// NewRedis parses the URL and creates the client; it does not connect yet.
func NewRedis(cfg RedisConfig) (*Redis, error) {
	opt, err := redis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("parsing Redis URL: %w", err)
	}
	opt.DialTimeout = 2 * time.Second
	opt.MaxRetries = 1
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
	if cfg.OnSubscribed == nil {
		cfg.OnSubscribed = func() {}
	}
	return &Redis{cfg: cfg, client: redis.NewClient(opt)}, nil
}

func (r *Redis) setReady(v bool) {
	if r.ready.Swap(v) != v {
		r.cfg.OnReady(v)
	}
}

// Run implements Broker. On any connection error it marks itself not ready,
// waits a capped, fully jittered exponential backoff and lets go-redis
// reconnect and resubscribe; connected clients are not touched meanwhile.
func (r *Redis) Run(ctx context.Context, h Handler) error {
	ps := r.client.Subscribe(ctx, r.cfg.Inbound)
	defer ps.Close()
	stop := context.AfterFunc(ctx, func() { ps.Close() })
	defer stop()
	defer r.setReady(false)

	attempt := 0
	for {
		msg, err := ps.ReceiveTimeout(ctx, 15*time.Second)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Quiet channel: prove the connection is alive.
				if perr := ps.Ping(ctx); perr == nil {
					continue
				}
			}
			if r.ready.Load() || attempt == 0 {
				r.cfg.Logger.Warn("redis subscription lost; reconnecting", "channel", r.cfg.Inbound, "err", err)
			}
			r.setReady(false)
			r.cfg.OnReconnect()
			if !sleep(ctx, backoff(attempt, r.cfg.MinBackoff, r.cfg.MaxBackoff)) {
				return nil
			}
			attempt++
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				if attempt > 0 {
					r.cfg.Logger.Info("redis subscription restored", "channel", m.Channel, "attempts", attempt)
				}
				attempt = 0
				// Backends calling FCALL need the functions even when no
				// gateway has recorded anything since Redis restarted.
				if err := r.loadHistory(ctx); err != nil {
					r.cfg.Logger.Warn("redis: history functions not loaded", "err", err)
				}
				r.setReady(true)
				r.cfg.OnSubscribed()
			}
		case *redis.Message:
			// Zero-copy view: Handler must not keep or modify payload
			// (the Handler contract), and the string is never mutated.
			h(unsafe.Slice(unsafe.StringData(m.Payload), len(m.Payload)))
		case *redis.Pong:
		}
	}
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

// Ready implements Broker.
func (r *Redis) Ready() bool { return r.ready.Load() }

// Close implements Broker.
func (r *Redis) Close() error { return r.client.Close() }
