package broker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

// routedNode is one gateway's routed broker on a shared Redis.
type routedNode struct {
	b    *Redis
	got  <-chan string
	stop func() // ends its Run and waits for it
}

func newRoutedNode(t *testing.T, url, id string, hist HistoryConfig, onInbound func(context.Context, []byte)) routedNode {
	t.Helper()
	b, err := NewRedis(RedisConfig{URL: url, Inbound: "in", Routed: true, NodeID: id, History: hist,
		OnInbound: onInbound, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 100)
	done := make(chan struct{})
	go func() { defer close(done); _ = b.Run(ctx, func(p []byte) { got <- string(p) }) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	waitReady(t, b)
	return routedNode{b: b, got: got, stop: stop}
}

func (n routedNode) watch(t *testing.T, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if err := n.b.Watch(ctx, key); err != nil {
		t.Fatal(err)
	}
}

// expect receives the next message and checks it contains want.
func expect(t *testing.T, got <-chan string, want string) string {
	t.Helper()
	select {
	case m := <-got:
		if !strings.Contains(m, want) {
			t.Fatalf("got %s, want one holding %s", m, want)
		}
		return m
	case <-time.After(patience):
		t.Fatalf("nothing holding %s arrived", want)
	}
	return ""
}

// untilArrives calls publish until a message holding want reaches n,
// within patience: pub/sub loses what is published while a subscription
// is being made again, which a slow machine may stretch.
func (n routedNode) untilArrives(t *testing.T, want string, publish func()) {
	t.Helper()
	for deadline := time.Now().Add(patience); ; {
		publish()
		select {
		case m := <-n.got:
			if strings.Contains(m, want) {
				return
			}
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing holding %s arrived within %v", want, patience)
		}
	}
}

// nothing checks that no message is waiting, after a marker published on
// a channel the node does watch has arrived: Redis delivers in order on
// one connection, so anything sent before the marker would be ahead of it.
func nothing(t *testing.T, n routedNode, markerKey string) {
	t.Helper()
	marker := envelope.ForKey([]byte(`{"data":"marker"}`), []byte(markerKey))
	if err := n.b.Deliver(context.Background(), []Routed{{Key: markerKey, Payload: marker}}); err != nil {
		t.Fatal(err)
	}
	if m := <-n.got; !strings.Contains(m, `"marker"`) {
		t.Fatalf("unexpected message %s", m)
	}
}

// With per-key routing a node receives only the messages of the keys it
// watches, and broadcasts; live and recorded (the history function
// publishes one message per key on its channel, with its id).
func TestRedisRoutingDeliversOnlyToWatchingNodes(t *testing.T) {
	for _, hist := range []HistoryConfig{{}, {Size: 10, TTL: time.Minute}} {
		t.Run(fmt.Sprintf("history=%d", hist.Size), func(t *testing.T) {
			srv := testenv.Redis(t)
			a := newRoutedNode(t, srv.URL(), "a", hist, nil)
			b := newRoutedNode(t, srv.URL(), "b", hist, nil)
			a.watch(t, "ka")
			b.watch(t, "kb")
			b.watch(t, "k/b") // a key that JSON escapes

			publish := func(msg string) {
				t.Helper()
				if hist.Size > 0 {
					if _, err := b.b.Record(context.Background(), []byte(msg), ""); err != nil {
						t.Fatal(err)
					}
					return
				}
				var p envelope.Parser
				env, err := p.Parse([]byte(msg))
				if err != nil {
					t.Fatal(err)
				}
				var out []Routed
				if env.Broadcast {
					out = append(out, Routed{Broadcast: true, Payload: []byte(msg)})
				}
				for _, k := range env.Recipients {
					out = append(out, Routed{Key: string(k), Payload: envelope.ForKey(env.Payload, k)})
				}
				if err := a.b.Deliver(context.Background(), out); err != nil {
					t.Fatal(err)
				}
			}
			publish(`{"recipients":["kb","nobody"],"data":{"n":1},"extra":true}`)
			m := expect(t, b.got, `"n":1`)
			if !strings.Contains(m, `"recipients":["kb"]`) || !strings.Contains(m, `"extra":true`) {
				t.Fatalf("routed message %s: want one recipient and every other member", m)
			}
			if (hist.Size > 0) != strings.Contains(m, `"wspubsub_ids":["`) {
				t.Fatalf("routed message %s: ids only with history", m)
			}
			nothing(t, a, "ka")

			publish(`{"recipients":["k/b"],"data":2}`)
			m = expect(t, b.got, `"data":2`)
			var p envelope.Parser
			env, err := p.Parse([]byte(m))
			if err != nil || len(env.Recipients) != 1 || string(env.Recipients[0]) != "k/b" {
				t.Fatalf("routed message %s parsed as %q, %v", m, env.Recipients, err)
			}

			publish(`{"broadcast":true,"data":3}`)
			expect(t, a.got, `"data":3`)
			expect(t, b.got, `"data":3`)

			// Once unwatched (and the linger passed) ka's messages stop.
			a.b.Unwatch("ka")
			a.b.route.sweep(time.Now().Add(unwatchLinger), unwatchLinger)
			a.watch(t, "kx")
			publish(`{"recipients":["ka"],"data":4}`)
			nothing(t, a, "kx")
		})
	}
}

// Watch returns only once the subscription is confirmed: a message
// published right after it reaches the node (nothing to wait for).
func TestRedisRoutingWatchIsConfirmed(t *testing.T) {
	srv := testenv.Redis(t)
	n := newRoutedNode(t, srv.URL(), "a", HistoryConfig{}, nil)
	for i := range 200 {
		key := fmt.Sprintf("key-%d", i)
		n.watch(t, key)
		p := envelope.ForKey([]byte(fmt.Sprintf(`{"data":%d}`, i)), []byte(key))
		if err := n.b.Deliver(context.Background(), []Routed{{Key: key, Payload: p}}); err != nil {
			t.Fatal(err)
		}
		expect(t, n.got, fmt.Sprintf(`"data":%d`, i))
	}
	if w := n.b.Watched(); w != 200 {
		t.Fatalf("watched %d keys, want 200", w)
	}
}

// A plain PUBLISH on the inbound channel reaches the one node holding the
// forwarding lease, which routes it; when that node stops, another takes
// the lease over.
func TestRedisRoutingForwardsPlainPublishes(t *testing.T) {
	srv := testenv.Redis(t)
	forwarded := make(chan string, 10)
	fwd := func(name string) func(context.Context, []byte) {
		return func(_ context.Context, msg []byte) { forwarded <- name + ":" + string(msg) }
	}
	a := newRoutedNode(t, srv.URL(), "a", HistoryConfig{}, fwd("a"))
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	// The lease is taken on Run's start; publish until the forwarder is
	// subscribed (a plain PUBLISH with no subscriber reaches no one).
	first := waitForward(t, rdb, forwarded, "one")
	if !strings.HasPrefix(first, "a:") {
		t.Fatalf("forwarded by %s", first)
	}
	holder, _ := rdb.Get(ctx, leaseKey("in")).Result()
	if holder != a.b.instance || !strings.HasPrefix(holder, "a-") {
		t.Fatalf("lease held by %q", holder)
	}
	newRoutedNode(t, srv.URL(), "b", HistoryConfig{}, fwd("b"))
	a.stop() // a stops: it gives the lease back, b takes it over
	if v, err := rdb.Get(ctx, leaseKey("in")).Result(); err == nil && strings.HasPrefix(v, "a-") {
		t.Fatalf("a stopped and still holds the lease")
	}
	m := waitForward(t, rdb, forwarded, "two")
	if !strings.HasPrefix(m, "b:") {
		t.Fatalf("after a stopped, forwarded by %s", m)
	}
}

func waitForward(t *testing.T, rdb *redis.Client, forwarded <-chan string, what string) string {
	t.Helper()
	deadline := time.Now().Add(patience)
	for time.Now().Before(deadline) {
		rdb.Publish(context.Background(), "in", what)
		select {
		case m := <-forwarded:
			if strings.HasSuffix(m, what) {
				return m
			}
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("%q never forwarded", what)
	return ""
}

// After a Redis restart the routed subscription comes back with every
// watched key's channel, and OnSubscribed runs once it has (resuming
// clients catch up from history then).
func TestRedisRoutingResubscribesAfterRestart(t *testing.T) {
	srv := testenv.Redis(t)
	subscribed := make(chan struct{}, 10)
	// The broker's log (debug level) goes to the test's: this test failed
	// once in CI (no subscription within a minute of a restart 20 ms
	// after the stop) and never in hundreds of runs here.
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", Routed: true, NodeID: "a", MaxBackoff: 200 * time.Millisecond,
		Logger: testenv.Logger(t), OnSubscribed: func() { subscribed <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	n := routedNode{b: b, got: runBroker(t, b)}
	<-subscribed
	n.watch(t, "k1")
	srv.Stop()
	deadline := time.Now().Add(patience)
	for b.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("still ready with Redis down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	srv.Start()
	select {
	case <-subscribed:
	case <-time.After(patience):
		t.Fatal("OnSubscribed not called after the restart")
	}
	// Ready once every channel is subscribed again: OnSubscribed comes
	// for each connection settled, and an attempt that lost its first
	// connection subscribes the rest in the next one.
	waitReady(t, b)
	p := envelope.ForKey([]byte(`{"data":"after"}`), []byte("k1"))
	if err := b.Deliver(context.Background(), []Routed{{Key: "k1", Payload: p}}); err != nil {
		t.Fatal(err)
	}
	expect(t, n.got, `"after"`)
}

// A subscription that silently stops delivering (no error) is found by its
// probe, dropped and made again; the hub is told to resync.
func TestRedisRoutingProbeRebuildsASilentSubscription(t *testing.T) {
	srv := testenv.Redis(t)
	var muted, probeLost atomic.Bool
	lost := make(chan struct{}, 100)
	subscribed := make(chan struct{}, 100)
	// again hears of a subscription made after a probe was lost, whenever
	// that is: were the test to wait for one made after the mute ends, a
	// rebuild finished just before (the test's goroutine running late)
	// could be the last one needed, and none would come.
	again := make(chan struct{}, 1)
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", Routed: true, NodeID: "a",
		ProbeInterval: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		OnProbeLost: func() { probeLost.Store(true); lost <- struct{}{} },
		OnSubscribed: func() {
			if !probeLost.Load() {
				subscribed <- struct{}{}
				return
			}
			select {
			case again <- struct{}{}:
			default:
			}
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.mute = muted.Load
	n := routedNode{b: b, got: runBroker(t, b)}
	<-subscribed
	n.watch(t, "k1")
	muted.Store(true)
	select {
	case <-lost:
	case <-time.After(patience):
		t.Fatal("the silent subscription's probe was never missed")
	}
	muted.Store(false)
	select {
	case <-again:
	case <-time.After(patience):
		t.Fatal("the subscription was not made again")
	}
	// Published until it arrives: with probes this frequent a slow machine
	// may drop and rebuild the subscription again meanwhile (pub/sub loses
	// what is published then), which must not fail the test.
	p := envelope.ForKey([]byte(`{"data":"again"}`), []byte("k1"))
	n.untilArrives(t, `"again"`, func() {
		if err := b.Deliver(context.Background(), []Routed{{Key: "k1", Payload: p}}); err != nil {
			t.Fatal(err)
		}
	})
}

// flakyProxy forwards TCP connections to a Redis; drop cuts every open
// one, and the next refusals connections after it are refused or passed by
// a seeded coin (accepted and closed at once), so a rebuild meets Redis
// coming back at every point of its sequence.
type flakyProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	left   int // connections still to decide by coin
	rng    *rand.Rand
}

func newFlakyProxy(t *testing.T, target string) *flakyProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &flakyProxy{ln: ln, target: target, rng: rand.New(rand.NewPCG(1, 2))}
	t.Cleanup(func() { ln.Close(); p.drop(0) })
	go p.serve()
	return p
}

func (p *flakyProxy) URL() string { return "redis://" + p.ln.Addr().String() }

func (p *flakyProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := false
		if p.left > 0 {
			p.left--
			refuse = p.rng.IntN(2) == 0
		}
		if refuse {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}

// drop cuts every open connection; the next refusals are decided by coin.
func (p *flakyProxy) drop(refusals int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.left = refusals
}

// A rebuild whose first connection dies and whose next one works, within
// one attempt, still settles: the node becomes ready and the hub is told
// to resync (it once did neither, until the next loss: a routed gateway
// stayed unready after a Redis restart a few milliseconds long).
func TestRedisRoutingRebuildSettlesWhicheverConnectionCarriesIt(t *testing.T) {
	srv := testenv.Redis(t)
	px := newFlakyProxy(t, srv.Addr())
	// One channel, in order: a working subscription lost ("lost"), a
	// rebuild settled ("subscribed").
	events := make(chan string, 1000)
	b, err := NewRedis(RedisConfig{URL: px.URL(), Inbound: "in", Routed: true, NodeID: "a", MaxBackoff: 20 * time.Millisecond,
		Logger:       testenv.Logger(t),
		OnReconnect:  func() { events <- "lost" },
		OnSubscribed: func() { events <- "subscribed" }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	n := routedNode{b: b, got: runBroker(t, b)}
	n.watch(t, "k1")
	next := func(round int, want string) {
		t.Helper()
		for {
			select {
			case ev := <-events:
				if ev == want {
					return
				}
			case <-time.After(patience):
				t.Fatalf("round %d: no %q within %v", round, want, patience)
			}
		}
	}
	next(-1, "subscribed")
	for round := range 30 {
		px.drop(8)
		next(round, "lost")
		next(round, "subscribed")
		waitReady(t, b)
		// Delivered, whatever the publisher's connections met.
		p := envelope.ForKey(fmt.Appendf(nil, `{"data":"round %d"}`, round), []byte("k1"))
		n.untilArrives(t, fmt.Sprintf(`"round %d"`, round), func() {
			_ = b.Deliver(context.Background(), []Routed{{Key: "k1", Payload: p}})
		})
	}
}
