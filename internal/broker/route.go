package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Per-key routing (--routing keys). Every key's messages travel on the
// key's own sharded channel (SPUBLISH), and a node subscribes (SSUBSCRIBE)
// to the channels of the keys it holds: a node receives only its keys'
// messages, plus broadcasts, instead of all of them. The braces are hash
// tags: in a Redis Cluster a key's channel, history and idempotency records
// share one slot, so one function call records and publishes atomically.
//
// Plain PUBLISH on the inbound channel (the original's way) reaches the one
// node holding the forwarding lease, which turns each message into routed
// ones (Redis.OnInbound, set by the gateway).

// Router is implemented by brokers that route each key's messages only to
// the nodes that hold the key.
type Router interface {
	// Watch makes this node receive key's messages: it returns once the
	// subscription is confirmed (a message published after that reaches
	// the handler), or with an error when ctx ends first. Each Watch is
	// undone by one Unwatch.
	Watch(ctx context.Context, key string) error
	// Unwatch drops one Watch of key; its subscription ends, batched with
	// others, a moment after the last one.
	Unwatch(key string)
	// Deliver publishes live (no history) each message on its channel.
	Deliver(ctx context.Context, msgs []Routed) error
}

// Routed is one message for one key's channel, or for every node.
type Routed struct {
	Key       string // "" with Broadcast
	Broadcast bool
	Payload   []byte // a one-recipient envelope (see envelope.ForKey), or the broadcast as published
}

// KeyChannel is the sharded channel of key's messages.
func KeyChannel(key string) string { return "wspubsub:k:{" + key + "}" }

// BroadcastChannel carries broadcasts to every node (one shard carries
// them all: a broadcast reaches every node anyway).
func BroadcastChannel(inbound string) string { return "wspubsub:b:{" + inbound + "}" }

// leaseKey names the node forwarding plain PUBLISHes on inbound.
func leaseKey(inbound string) string { return "wspubsub:lease:{" + inbound + "}" }

const (
	// unwatchLinger keeps a key's subscription a moment after its last
	// session left: a client reconnecting to the same node finds it ready.
	unwatchLinger = 5 * time.Second
	// subscribeBatch bounds the channels of one SSUBSCRIBE/SUNSUBSCRIBE.
	subscribeBatch = 512
	// leaseTTL and leaseRenew: a forwarding node that dies is replaced
	// within leaseTTL.
	leaseTTL   = 6 * time.Second
	leaseRenew = 2 * time.Second
)

// watch is one key's subscription on this node.
type watch struct {
	refs  int
	inSub int           // SSUBSCRIBEs sent and not yet confirmed
	ready chan struct{} // closed, then nil, once the latest SSUBSCRIBE is confirmed
	idle  time.Time     // when refs fell to 0
}

// router is the Redis broker's per-key routing state.
type router struct {
	mu      sync.Mutex
	watches map[string]*watch
	ops     []subOp       // subscription commands to send, in order
	kick    chan struct{} // one token: ops is not empty
}

type subOp struct {
	channel string
	sub     bool
}

func newRouter() *router {
	return &router{watches: map[string]*watch{}, kick: make(chan struct{}, 1)}
}

// Watch implements Router.
func (r *Redis) Watch(ctx context.Context, key string) error {
	rt := r.route
	if rt == nil {
		return nil
	}
	rt.mu.Lock()
	w := rt.watches[key]
	if w == nil {
		w = &watch{ready: make(chan struct{})}
		rt.watches[key] = w
	}
	w.refs++
	if w.inSub == 0 && w.ready != nil {
		w.inSub++
		rt.queue(subOp{KeyChannel(key), true})
	}
	ready := w.ready
	rt.mu.Unlock()
	if ready == nil {
		return nil
	}
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		r.Unwatch(key)
		return fmt.Errorf("subscribing to the channel of a key: %w", ctx.Err())
	}
}

// Unwatch implements Router.
func (r *Redis) Unwatch(key string) {
	rt := r.route
	if rt == nil {
		return
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if w := rt.watches[key]; w != nil && w.refs > 0 {
		if w.refs--; w.refs == 0 {
			w.idle = time.Now()
		}
	}
}

// queue adds op for the subscriber goroutine. Under rt.mu.
func (rt *router) queue(op subOp) {
	rt.ops = append(rt.ops, op)
	select {
	case rt.kick <- struct{}{}:
	default:
	}
}

// sweep queues the unsubscription of keys idle for longer than linger. A
// key whose SSUBSCRIBE is still unconfirmed waits: its confirmation must
// not be taken for that of a later subscription.
func (rt *router) sweep(now time.Time, linger time.Duration) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for key, w := range rt.watches {
		if w.refs == 0 && w.inSub == 0 && now.Sub(w.idle) >= linger {
			delete(rt.watches, key)
			rt.queue(subOp{KeyChannel(key), false})
		}
	}
}

// confirmed records a subscription confirmation from Redis.
func (rt *router) confirmed(channel string) {
	key, ok := keyOfChannel(channel)
	if !ok {
		return
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	w := rt.watches[key]
	if w == nil {
		return
	}
	// Confirmations also come after a reconnection (go-redis subscribes
	// again to everything): never below zero.
	if w.inSub > 0 {
		w.inSub--
	}
	if w.inSub == 0 && w.ready != nil {
		close(w.ready)
		w.ready = nil // confirmed: no channel kept per watched key
	}
}

func keyOfChannel(ch string) (string, bool) {
	const pre = "wspubsub:k:{"
	if len(ch) < len(pre)+1 || ch[:len(pre)] != pre || ch[len(ch)-1] != '}' {
		return "", false
	}
	return ch[len(pre) : len(ch)-1], true
}

// isWatched reports whether key is still watched (or lingering).
func (rt *router) isWatched(key string) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.watches[key] != nil
}

// watched is the number of keys subscribed to (or being).
func (rt *router) watched() int {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return len(rt.watches)
}

// take returns the queued commands.
func (rt *router) take() []subOp {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	ops := rt.ops
	rt.ops = nil
	return ops
}

// Deliver implements Router: one pipeline of SPUBLISHes.
func (r *Redis) Deliver(ctx context.Context, msgs []Routed) error {
	_, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, m := range msgs {
			ch := KeyChannel(m.Key)
			if m.Broadcast {
				ch = BroadcastChannel(r.cfg.Inbound)
			}
			p.SPublish(ctx, ch, m.Payload)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("publishing %d routed messages on Redis: %w", len(msgs), err)
	}
	return nil
}

// forwardWhileLeased competes for the forwarding lease; while this node
// holds it, it subscribes to the inbound channel and hands every plain
// PUBLISH to OnInbound, which routes it. During a handover (the holder
// died: up to leaseTTL) plain messages reach no one, as with pub/sub when
// no gateway is subscribed.
func (r *Redis) forwardWhileLeased(ctx context.Context) {
	key := leaseKey(r.cfg.Inbound)
	var stopFwd context.CancelFunc
	defer func() {
		if stopFwd != nil {
			stopFwd()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			if err := r.client.Eval(rctx, releaseLua, []string{key}, r.instance).Err(); err != nil {
				r.cfg.Logger.Warn("redis: forwarding lease not given back; another node takes it when it expires", "err", err)
			}
		}
	}()
	t := time.NewTicker(leaseRenew)
	defer t.Stop()
	for {
		held, err := r.client.Eval(ctx, leaseLua, []string{key}, r.instance, leaseTTL.Milliseconds()).Int()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil || held == 0:
			if stopFwd != nil {
				r.cfg.Logger.Info("redis: forwarding lease lost; another node forwards plain PUBLISHes", "channel", r.cfg.Inbound, "err", err)
				stopFwd()
				stopFwd = nil
			}
		case stopFwd == nil:
			fctx, cancel := context.WithCancel(ctx)
			stopFwd = cancel
			r.cfg.Logger.Info("redis: this node forwards plain PUBLISHes to the keys' channels", "channel", r.cfg.Inbound)
			go r.forward(fctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// leaseLua takes the lease when free, or renews it when this node holds
// it; 1 when held.
const leaseLua = `
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0`

const releaseLua = `
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0`

// forward hands inbound messages to OnInbound until ctx ends.
func (r *Redis) forward(ctx context.Context) {
	ps := r.client.Subscribe(ctx, r.cfg.Inbound)
	defer ps.Close()
	stop := context.AfterFunc(ctx, func() { ps.Close() })
	defer stop()
	for {
		msg, err := ps.ReceiveTimeout(ctx, 15*time.Second)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if !sleep(ctx, backoff(1, r.cfg.MinBackoff, r.cfg.MaxBackoff)) {
				return
			}
			continue
		}
		if m, ok := msg.(*redis.Message); ok {
			r.cfg.OnInbound(ctx, []byte(m.Payload))
		}
	}
}
