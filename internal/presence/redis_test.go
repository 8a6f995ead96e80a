package presence

import (
	"context"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// hb is the nodes' heartbeat: their clock is the test's, but Redis's TTL
// on a node record (two heartbeats) is real time, so it is long enough
// that no step, however slow the machine, outlives a live node's record.
const hb = time.Hour

// node is one presence instance driven by hand: the test calls beat and
// flush instead of Run, so that nothing depends on timers.
func node(t *testing.T, rdb redis.UniversalClient, id string, clk *clock) *Redis {
	t.Helper()
	return NewRedis(rdb, Config{NodeID: id, Addr: func() string { return id + ":8088" }, Version: "test",
		Heartbeat: hb, Now: clk.Now, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

func redisClient(t *testing.T, srv *testenv.Service) *redis.Client {
	t.Helper()
	// Long timeouts: a command to a live Redis must not fail for being slow
	// (one to a stopped Redis fails at once, refused).
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1,
		DialTimeout: time.Minute, ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func lookup(t *testing.T, p Presence, keys ...string) map[string][]Entry {
	t.Helper()
	got, err := p.Lookup(context.Background(), keys)
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}
	return got
}

func nodeIDs(t *testing.T, p Presence) []string {
	t.Helper()
	ns, err := p.Nodes(context.Background())
	if err != nil {
		t.Fatalf("Nodes: %v", err)
	}
	ids := []string{}
	for _, n := range ns {
		ids = append(ids, n.ID)
	}
	return ids
}

func TestRedisCountsWhileSessionsComeAndGo(t *testing.T) {
	ctx := context.Background()
	rdb := redisClient(t, testenv.Redis(t))
	clk := newClock()
	a := node(t, rdb, "n1", clk)
	must(t, a.beat(ctx))
	// Two transports, sessions coming and going between writes.
	a.Join("k", "websocket")
	a.Join("k", "websocket")
	a.Join("k", "eventsource")
	a.Join("gone", "polling")
	a.Leave("gone", "polling")
	must(t, a.flush(ctx))
	want := map[string][]Entry{"k": {{Node: "n1", Conns: 3, Transports: []string{"eventsource", "websocket"}}}}
	if got := lookup(t, a, "k", "gone", "never"); !reflect.DeepEqual(got, want) {
		t.Fatalf("Lookup = %+v, want %+v", got, want)
	}
	if n := rdb.Exists(ctx, presenceKey("gone")).Val(); n != 0 {
		t.Fatal("a key that came and went between writes was written")
	}
	a.Leave("k", "eventsource")
	a.Leave("k", "websocket")
	must(t, a.flush(ctx))
	want = map[string][]Entry{"k": {{Node: "n1", Conns: 1, Transports: []string{"websocket"}}}}
	if got := lookup(t, a, "k"); !reflect.DeepEqual(got, want) {
		t.Fatalf("Lookup = %+v, want %+v", got, want)
	}
	a.Leave("k", "websocket")
	must(t, a.flush(ctx))
	if got := lookup(t, a, "k"); len(got) != 0 {
		t.Fatalf("after the last leave: %+v", got)
	}
	// Nothing is left behind in Redis for a key with no connection.
	if n := rdb.Exists(ctx, presenceKey("k")).Val(); n != 0 {
		t.Fatal("the key's hash is still there")
	}
	if n := rdb.SCard(ctx, nodeKeysKey("n1")).Val(); n != 0 {
		t.Fatalf("the node's key set holds %d keys", n)
	}
	ns, err := a.Nodes(ctx)
	must(t, err)
	if len(ns) != 1 || ns[0].ID != "n1" || ns[0].Addr != "n1:8088" || ns[0].Version != "test" || !ns[0].Heartbeat.Equal(clk.Now()) {
		t.Fatalf("Nodes = %+v", ns)
	}
}

// TestRedisNodeKilled: two nodes on one Redis; one stops heartbeating
// without any clean-up (a SIGKILL). Two heartbeats later (by the injected
// clock) it is out of every answer; its record's TTL is two heartbeats, so
// Redis drops it by then too; after that readers and the surviving node's
// heartbeats remove its fields and its registry entry.
func TestRedisNodeKilled(t *testing.T) {
	ctx := context.Background()
	rdb := redisClient(t, testenv.Redis(t))
	clk := newClock()
	a, b := node(t, rdb, "a", clk), node(t, rdb, "b", clk)
	must(t, a.beat(ctx))
	must(t, b.beat(ctx))
	a.Join("shared", "websocket")
	a.Join("only-a", "polling")
	b.Join("shared", "eventsource")
	b.Join("shared", "eventsource")
	must(t, a.flush(ctx))
	must(t, b.flush(ctx))
	a.Join("only-a", "polling") // counted in memory only: a dies before writing it

	want := map[string][]Entry{
		"shared": {{Node: "a", Conns: 1, Transports: []string{"websocket"}}, {Node: "b", Conns: 2, Transports: []string{"eventsource"}}},
		"only-a": {{Node: "a", Conns: 1, Transports: []string{"polling"}}},
	}
	for _, p := range []Presence{a, b} {
		if got := lookup(t, p, "shared", "only-a"); !reflect.DeepEqual(got, want) {
			t.Fatalf("Lookup = %+v, want %+v", got, want)
		}
		if got := nodeIDs(t, p); !reflect.DeepEqual(got, []string{"a", "b"}) {
			t.Fatalf("Nodes = %v", got)
		}
	}
	ttl := rdb.PTTL(ctx, nodeKey("a")).Val()
	if ttl <= 0 || ttl > 2*hb {
		t.Fatalf("node record TTL %v, want (0, %v]", ttl, 2*hb)
	}

	// a is killed: no more beats. One heartbeat later it still counts.
	clk.Add(hb)
	must(t, b.beat(ctx))
	if got := nodeIDs(t, b); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Fatalf("one heartbeat after: Nodes = %v", got)
	}
	clk.Add(hb + time.Millisecond)
	must(t, b.beat(ctx))
	want = map[string][]Entry{"shared": {{Node: "b", Conns: 2, Transports: []string{"eventsource"}}}}
	if got := lookup(t, b, "shared", "only-a"); !reflect.DeepEqual(got, want) {
		t.Fatalf("two heartbeats after: Lookup = %+v, want %+v", got, want)
	}
	if got := nodeIDs(t, b); !reflect.DeepEqual(got, []string{"b"}) {
		t.Fatalf("two heartbeats after: Nodes = %v", got)
	}

	// Redis expires the record (its TTL, done here at once): a reader
	// removes the fields it meets, b's heartbeats the rest and a's
	// registry entry.
	must(t, rdb.Del(ctx, nodeKey("a")).Err())
	lookup(t, b, "shared")
	if rdb.HExists(ctx, presenceKey("shared"), "a").Val() {
		t.Fatal("the reader left the dead node's field")
	}
	must(t, b.beat(ctx)) // HRANDFIELD of 2 out of 2 registered: sees a
	if rdb.HExists(ctx, presenceKey("only-a"), "a").Val() || rdb.HExists(ctx, nodesKey, "a").Val() || rdb.Exists(ctx, nodeKeysKey("a")).Val() != 0 {
		t.Fatal("the dead node's leftovers were not reaped")
	}
	if !rdb.HExists(ctx, presenceKey("shared"), "b").Val() {
		t.Fatal("the live node's field was removed")
	}
}

// TestRedisRestartSameID: a node restarted under the same id (after a
// crash) never shows its old keys, and sweeps their fields at start.
func TestRedisRestartSameID(t *testing.T) {
	ctx := context.Background()
	rdb := redisClient(t, testenv.Redis(t))
	clk := newClock()
	old := node(t, rdb, "n", clk)
	must(t, old.beat(ctx))
	old.Join("k1", "websocket")
	old.Join("k2", "websocket")
	must(t, old.flush(ctx))

	clk.Add(time.Second) // the restart, within the old record's TTL
	n := node(t, rdb, "n", clk)
	n.Join("k2", "polling")
	must(t, n.beat(ctx))
	if rdb.HExists(ctx, presenceKey("k1"), "n").Val() {
		t.Fatal("the old process's field of k1 was not swept")
	}
	if got := lookup(t, n, "k1", "k2"); len(got) != 0 {
		t.Fatalf("before the restarted node wrote anything: %+v", got)
	}
	must(t, n.flush(ctx))
	want := map[string][]Entry{"k2": {{Node: "n", Conns: 1, Transports: []string{"polling"}}}}
	if got := lookup(t, n, "k1", "k2"); !reflect.DeepEqual(got, want) {
		t.Fatalf("Lookup = %+v, want %+v", got, want)
	}
	if got := rdb.SMembers(ctx, nodeKeysKey("n")).Val(); !reflect.DeepEqual(got, []string{"k2"}) {
		t.Fatalf("key set = %v", got)
	}
}

// TestRedisOutage: Join and Leave go on while Redis is down (memory only);
// the writes wait, bounded, and when Redis comes back empty (no
// persistence) the node registers again and rewrites what is live.
func TestRedisOutage(t *testing.T) {
	ctx := context.Background()
	srv := testenv.Redis(t)
	rdb := redisClient(t, srv)
	clk := newClock()
	a := node(t, rdb, "a", clk)
	a.c.maxEmpty = 5
	must(t, a.beat(ctx))
	for _, k := range []string{"k1", "k2", "k3", "k4", "k5", "k6", "k7"} {
		a.Join(k, "websocket")
	}
	must(t, a.flush(ctx))
	srv.Stop()
	for _, k := range []string{"k1", "k2", "k3", "k4", "k5", "k6"} {
		a.Leave(k, "websocket")
	}
	a.Join("k8", "eventsource")
	if err := a.flush(ctx); err == nil {
		t.Fatal("flush with Redis down succeeded")
	}
	if !a.c.needsResync() || len(a.c.keys) != 2 {
		t.Fatalf("keys kept while down: %d (want the 2 live ones past the bound), resync %v", len(a.c.keys), a.c.needsResync())
	}
	if _, err := a.Lookup(ctx, []string{"k7"}); err == nil {
		t.Fatal("Lookup with Redis down succeeded")
	}
	srv.Start()
	must(t, a.beat(ctx))
	must(t, a.flush(ctx))
	want := map[string][]Entry{
		"k7": {{Node: "a", Conns: 1, Transports: []string{"websocket"}}},
		"k8": {{Node: "a", Conns: 1, Transports: []string{"eventsource"}}},
	}
	if got := lookup(t, a, "k1", "k6", "k7", "k8"); !reflect.DeepEqual(got, want) {
		t.Fatalf("after the outage: Lookup = %+v, want %+v", got, want)
	}
}

// TestRedisResyncAfterRecordLost: Redis kept the fields but the record
// expired (the node stalled past its TTL, and a reader removed its fields);
// the next heartbeat notices, starts a new epoch and writes everything
// again.
func TestRedisResyncAfterRecordLost(t *testing.T) {
	ctx := context.Background()
	rdb := redisClient(t, testenv.Redis(t))
	clk := newClock()
	a := node(t, rdb, "a", clk)
	must(t, a.beat(ctx))
	a.Join("k", "websocket")
	must(t, a.flush(ctx))
	epoch := a.epoch
	must(t, rdb.Del(ctx, nodeKey("a")).Err())
	if got := lookup(t, a, "k"); len(got) != 0 {
		t.Fatalf("without a record: %+v", got)
	}
	clk.Add(time.Millisecond)
	must(t, a.beat(ctx))
	if a.epoch == epoch {
		t.Fatal("no new epoch")
	}
	must(t, a.flush(ctx))
	if got := lookup(t, a, "k"); len(got["k"]) != 1 || got["k"][0].Conns != 1 {
		t.Fatalf("after the resync: %+v", got)
	}
}

// TestRedisRunAndClose: the goroutine writes what Join queues, and Close
// removes this node from Redis at once.
func TestRedisRunAndClose(t *testing.T) {
	ctx := context.Background()
	rdb := redisClient(t, testenv.Redis(t))
	a := NewRedis(rdb, Config{NodeID: "a", Heartbeat: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go a.Run(runCtx)
	a.Join("k", "websocket")
	deadline := time.Now().Add(30 * time.Second)
	for len(lookup(t, a, "k")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the join was never written")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	must(t, a.Close(cctx))
	keys, err := rdb.Keys(ctx, "wspubsub:*").Result()
	must(t, err)
	if len(keys) != 0 {
		t.Fatalf("left in Redis after Close: %v", keys)
	}
}

// TestRedisSameIDTwice: two live processes under one --node-id are told.
func TestRedisSameIDTwice(t *testing.T) {
	ctx := context.Background()
	rdb := redisClient(t, testenv.Redis(t))
	clk := newClock()
	var logs lockedLog
	a := node(t, rdb, "n", clk)
	b := node(t, rdb, "n", clk)
	b.cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	must(t, b.beat(ctx))
	clk.Add(time.Millisecond)
	must(t, a.beat(ctx))
	must(t, b.beat(ctx))
	if !strings.Contains(logs.String(), "another gateway uses the same --node-id") {
		t.Fatalf("no warning; log:\n%s", logs.String())
	}
}

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
