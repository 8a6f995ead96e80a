package presence

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// TestRedisClusterPresence runs two nodes on a 3-master Redis Cluster:
// every command of the layout touches one slot, keys spread over the
// shards, and a killed node drops out the same way as on one server.
func TestRedisClusterPresence(t *testing.T) {
	ctx := context.Background()
	c := testenv.RedisCluster(t, 3, 0)
	var addrs []string
	for _, m := range c.Masters {
		addrs = append(addrs, m.Addr())
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, // long timeouts, as redisClient's
		DialTimeout: time.Minute, ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	t.Cleanup(func() { rdb.Close() })
	clk := newClock()
	a, b := node(t, rdb, "a", clk), node(t, rdb, "b", clk)
	must(t, a.beat(ctx))
	must(t, b.beat(ctx))
	var keys []string
	shards := map[string]bool{}
	for i := range 30 {
		k := fmt.Sprint("key-", i)
		keys = append(keys, k)
		shards[c.MasterOf(presenceKey(k)).Addr()] = true
		a.Join(k, "websocket")
		if i%2 == 0 {
			b.Join(k, "polling")
		}
	}
	if len(shards) < 2 {
		t.Fatalf("the keys landed on %d shard(s); the test needs several", len(shards))
	}
	must(t, a.flush(ctx))
	must(t, b.flush(ctx))
	got := lookup(t, b, keys...)
	for i, k := range keys {
		want := []Entry{{Node: "a", Conns: 1, Transports: []string{"websocket"}}}
		if i%2 == 0 {
			want = append(want, Entry{Node: "b", Conns: 1, Transports: []string{"polling"}})
		}
		if !reflect.DeepEqual(got[k], want) {
			t.Fatalf("%s: %+v, want %+v", k, got[k], want)
		}
	}
	if ids := nodeIDs(t, a); !reflect.DeepEqual(ids, []string{"a", "b"}) {
		t.Fatalf("Nodes = %v", ids)
	}

	// a is killed; two heartbeats later only b remains, and once Redis
	// has expired a's record b's heartbeat reaps its fields on every shard.
	clk.Add(2*hb + time.Millisecond)
	must(t, b.beat(ctx))
	got = lookup(t, b, keys...)
	if len(got) != len(keys)/2 || nodeIDs(t, b)[0] != "b" || len(nodeIDs(t, b)) != 1 {
		t.Fatalf("after a's death: %d keys online, nodes %v", len(got), nodeIDs(t, b))
	}
	must(t, rdb.Del(ctx, nodeKey("a")).Err())
	must(t, b.beat(ctx))
	for _, k := range keys {
		if rdb.HExists(ctx, presenceKey(k), "a").Val() {
			t.Fatalf("a's field of %s was not reaped", k)
		}
	}
	if v := rdb.HGetAll(ctx, nodesKey).Val(); len(v) != 1 || v["b"] == "" {
		t.Fatalf("registry = %v", v)
	}
}
