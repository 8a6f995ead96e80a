package broker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

func newClusterNode(t *testing.T, c *testenv.Cluster, id string, subscribed chan struct{}) routedNode {
	t.Helper()
	if subscribed == nil {
		subscribed = make(chan struct{}, 100)
	}
	b, err := NewRedis(RedisConfig{URL: c.Seeds(), Cluster: true, Routed: true, Inbound: "in", NodeID: id,
		History: HistoryConfig{Size: 10, TTL: time.Minute}, MaxBackoff: 500 * time.Millisecond,
		OnSubscribed: func() { subscribed <- struct{}{} },
		Logger:       slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return routedNode{b: b, got: runBroker(t, b)}
}

// keysOnDistinctMasters returns n keys whose slots are served by n
// different masters.
func keysOnDistinctMasters(t *testing.T, c *testenv.Cluster, n int) []string {
	t.Helper()
	var keys []string
	seen := map[*testenv.Service]bool{}
	for i := 0; len(keys) < n && i < 1000; i++ {
		k := fmt.Sprintf("user-%d", i)
		if m := c.MasterOf(StreamKey(k)); !seen[m] {
			seen[m] = true
			keys = append(keys, k)
		}
	}
	if len(keys) < n {
		t.Fatalf("found keys on %d masters, want %d", len(keys), n)
	}
	return keys
}

// On a 3-master Redis Cluster: the slot function agrees with the cluster;
// a message for keys on three masters is recorded per slot and reaches, on
// each key's own channel, only the node watching it, with the key's id;
// the histories answer on their masters; broadcasts reach every node.
func TestRedisClusterRouting(t *testing.T) {
	c := testenv.RedisCluster(t, 3, 0)
	for _, k := range []string{"a", "user-1", "wspubsub:k:{x}", "{}", "foo{}{bar}", "123456789"} {
		if got, want := Slot(k), c.Slot(k); int(got) != want {
			t.Fatalf("Slot(%q) = %d, CLUSTER KEYSLOT says %d", k, got, want)
		}
	}
	keys := keysOnDistinctMasters(t, c, 3)
	a := newClusterNode(t, c, "a", nil)
	b := newClusterNode(t, c, "b", nil)
	a.watch(t, keys[0])
	b.watch(t, keys[1])
	b.watch(t, keys[2])

	msg := fmt.Sprintf(`{"recipients":[%q,%q,%q,"nobody"],"data":{"n":1}}`, keys[0], keys[1], keys[2])
	rec, err := a.b.Record(context.Background(), []byte(msg), "once")
	if err != nil || rec.Duplicate || len(rec.IDs) != 4 {
		t.Fatalf("Record: %+v, %v", rec, err)
	}
	m := expect(t, a.got, `"n":1`)
	if !strings.Contains(m, fmt.Sprintf(`"recipients":[%q]`, keys[0])) || !strings.Contains(m, rec.IDs[0]) {
		t.Fatalf("node a got %s, want %s's message with id %s", m, keys[0], rec.IDs[0])
	}
	got := []string{expect(t, b.got, `"n":1`), expect(t, b.got, `"n":1`)}
	for i, k := range keys[1:] {
		if !strings.Contains(strings.Join(got, " "), fmt.Sprintf(`"wspubsub_ids":[%q],"recipients":[%q]`, rec.IDs[i+1], k)) {
			t.Fatalf("node b got %v, want %s's message with id %s", got, k, rec.IDs[i+1])
		}
	}
	again, err := b.b.Record(context.Background(), []byte(msg), "once")
	if err != nil || !again.Duplicate || strings.Join(again.IDs, ",") != strings.Join(rec.IDs, ",") {
		t.Fatalf("repeated Record: %+v, %v; want a duplicate with ids %v", again, err, rec.IDs)
	}
	for i, k := range keys {
		rp, err := a.b.Since(context.Background(), k, "0")
		if err != nil || len(rp.Entries) != 1 || rp.Entries[0].ID != rec.IDs[i] || string(rp.Entries[0].Payload) != `{"data":{"n":1}}` {
			t.Fatalf("Since(%s): %+v, %v", k, rp, err)
		}
	}
	nothing(t, a, keys[0])

	if _, err := b.b.Record(context.Background(), []byte(`{"broadcast":true,"data":2}`), ""); err != nil {
		t.Fatal(err)
	}
	expect(t, a.got, `"data":2`)
	expect(t, b.got, `"data":2`)
}

// A master killed and replaced by its replica: the node subscribes again
// on the new master (the hub is told to resync), and messages recorded
// after the failover reach it.
func TestRedisClusterFailover(t *testing.T) {
	c := testenv.RedisCluster(t, 3, 1)
	key := ""
	for i := 0; key == "" && i < 1000; i++ {
		if k := fmt.Sprintf("user-%d", i); c.MasterOf(StreamKey(k)) == c.Masters[0] {
			key = k
		}
	}
	subscribed := make(chan struct{}, 100)
	n := newClusterNode(t, c, "a", subscribed)
	n.watch(t, key)
	if _, err := n.b.Record(context.Background(), []byte(fmt.Sprintf(`{"recipients":[%q],"data":"before"}`, key)), ""); err != nil {
		t.Fatal(err)
	}
	expect(t, n.got, `"before"`)
	for len(subscribed) > 0 {
		<-subscribed
	}
	c.Failover(c.Masters[0])
	select {
	case <-subscribed:
	case <-time.After(60 * time.Second):
		t.Fatal("not subscribed again after the failover")
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := n.b.Record(context.Background(), []byte(fmt.Sprintf(`{"recipients":[%q],"data":"after"}`, key)), "after")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cannot record after the failover: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	expect(t, n.got, `"after"`)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// A resharding moves a watched key's slot to another master: Redis
// unsubscribes the node from the key's channel there, and the node
// subscribes again where the slot now is.
func TestRedisClusterSlotMove(t *testing.T) {
	c := testenv.RedisCluster(t, 3, 0)
	keys := keysOnDistinctMasters(t, c, 2)
	subscribed := make(chan struct{}, 100)
	n := newClusterNode(t, c, "a", subscribed)
	n.watch(t, keys[0])
	n.watch(t, keys[1]) // the destination master has a subscription of this node already
	deliver := func(what string) {
		t.Helper()
		p := envelope.ForKey([]byte(`{"data":"`+what+`"}`), []byte(keys[0]))
		if err := n.b.Deliver(context.Background(), []Routed{{Key: keys[0], Payload: p}}); err != nil {
			t.Fatal(err)
		}
	}
	deliver("before")
	expect(t, n.got, `"before"`)
	c.MoveSlot(KeyChannel(keys[0]), c.MasterOf(StreamKey(keys[1])))
	// Published until it arrives: until the node has subscribed again on
	// the new master, a message reaches no one (as pub/sub does).
	n.untilArrives(t, `"after"`, func() { deliver("after") })
}

// A subscription connection that carries no watched key's channel any more
// (its key was unwatched: only its probe is left) is lost: the node is
// ready again once it has noticed, with nothing to subscribe anew (it once
// stayed unready until some other loss).
func TestRedisClusterLosingAProbeOnlyConnectionKeepsTheNodeReady(t *testing.T) {
	c := testenv.RedisCluster(t, 3, 0)
	bcMaster := c.MasterOf(BroadcastChannel("in"))
	key := ""
	for i := 0; key == "" && i < 1000; i++ {
		if k := fmt.Sprintf("user-%d", i); c.MasterOf(KeyChannel(k)) != bcMaster {
			key = k
		}
	}
	lost := make(chan struct{}, 100)
	b, err := NewRedis(RedisConfig{URL: c.Seeds(), Cluster: true, Routed: true, Inbound: "in", NodeID: "a",
		MaxBackoff: 200 * time.Millisecond, OnReconnect: func() { lost <- struct{}{} }, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	n := routedNode{b: b, got: runBroker(t, b)}
	n.watch(t, key)
	b.Unwatch(key)
	m := c.MasterOf(KeyChannel(key))
	rc := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer rc.Close()
	ctx := context.Background()
	deadline := time.Now().Add(patience)
	for { // the unwatch lingers, then the channel is unsubscribed
		counts, err := rc.PubSubShardNumSub(ctx, KeyChannel(key)).Result()
		if err == nil && counts[KeyChannel(key)] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still subscribed: %v %v", key, counts, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := rc.ClientKillByFilter(ctx, "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lost:
	case <-time.After(patience):
		t.Fatal("the loss was not noticed")
	}
	waitReady(t, b)
}

// The slot of a connection's probe channel moves to another master: the
// connection is made again with a probe its master serves, at once, rather
// than passing for dead when its probes stop coming back.
func TestRedisClusterProbeChannelSlotMove(t *testing.T) {
	c := testenv.RedisCluster(t, 3, 0)
	keys := keysOnDistinctMasters(t, c, 2)
	events := make(chan string, 100)
	b, err := NewRedis(RedisConfig{URL: c.Seeds(), Cluster: true, Routed: true, Inbound: "in", NodeID: "a",
		// Probes far apart: no probe is lost during the test, so only the
		// moved slot can make the connection again (a slow machine cannot
		// turn it into a lost probe).
		ProbeInterval: 10 * patience, MaxBackoff: 200 * time.Millisecond, Logger: testenv.Logger(t),
		OnReconnect: func() { events <- "lost" }, OnProbeLost: func() { events <- "probe lost" }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	n := routedNode{b: b, got: runBroker(t, b)}
	n.watch(t, keys[0])
	// The probe channel of the connection to keys[0]'s master (as
	// probeChannel picks it).
	m := c.MasterOf(KeyChannel(keys[0]))
	probe := ""
	for i := 0; probe == ""; i++ {
		if ch := "wspubsub:probe:" + b.instance + ":{" + fmt.Sprint(i) + "}"; c.MasterOf(ch) == m {
			probe = ch
		}
	}
	c.MoveSlot(probe, c.MasterOf(KeyChannel(keys[1])))
	select {
	case ev := <-events:
		if ev != "lost" {
			t.Fatalf("first %q, want the connection made again at once", ev)
		}
	case <-time.After(patience):
		t.Fatal("the connection whose probe channel moved was not made again")
	}
	waitReady(t, b)
	p := envelope.ForKey([]byte(`{"data":"after"}`), []byte(keys[0]))
	n.untilArrives(t, `"after"`, func() { // the key's messages still arrive
		_ = b.Deliver(context.Background(), []Routed{{Key: keys[0], Payload: p}})
	})
}
