package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/gateway"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

func TestSplitListAndPIDs(t *testing.T) {
	if got := SplitList(" http://a:1, ,http://b:2,"); !reflect.DeepEqual(got, []string{"http://a:1", "http://b:2"}) {
		t.Fatalf("SplitList: %q", got)
	}
	if got := SplitList(""); got != nil {
		t.Fatalf("SplitList of nothing: %q", got)
	}
	if got, err := ParsePIDs("12, 34"); err != nil || !reflect.DeepEqual(got, []int{12, 34}) {
		t.Fatalf("ParsePIDs: %v %v", got, err)
	}
	if got, err := ParsePIDs(""); err != nil || got != nil {
		t.Fatalf("ParsePIDs of nothing: %v %v", got, err)
	}
	for _, bad := range []string{"x", "1,-2", "0"} {
		if _, err := ParsePIDs(bad); err == nil {
			t.Errorf("ParsePIDs(%q) accepted", bad)
		}
	}
}

func TestTargetsAndPIDsInDefaults(t *testing.T) {
	c := Config{Target: "http://127.0.0.1:1,http://127.0.0.1:2, http://127.0.0.1:3", Scenario: "idle", Conns: 10,
		GatewayPIDs: []int{7, 8, 9}}
	if err := c.defaults(); err != nil {
		t.Fatal(err)
	}
	if len(c.Targets) != 3 || c.Target != "http://127.0.0.1:1" || c.Routing != "all" {
		t.Fatalf("%+v", c)
	}
	if got := c.wsURLs(); !reflect.DeepEqual(got, []string{"ws://127.0.0.1:1/websocket", "ws://127.0.0.1:2/websocket", "ws://127.0.0.1:3/websocket"}) {
		t.Fatalf("ws URLs %q", got)
	}
	one := Config{Target: "http://127.0.0.1:1", Scenario: "idle", Conns: 1, GatewayPID: 42}
	if err := one.defaults(); err != nil || !reflect.DeepEqual(one.GatewayPIDs, []int{42}) {
		t.Fatalf("one target: %v %+v", err, one)
	}
	cl := Config{Target: "http://127.0.0.1:1", Scenario: "idle", Conns: 1, RedisCluster: true, RedisURL: "redis://127.0.0.1:7000"}
	if err := cl.defaults(); err != nil || cl.Routing != "keys" {
		t.Fatalf("cluster: routing %q, %v", cl.Routing, err)
	}
	for _, bad := range []Config{
		{Target: "http://127.0.0.1:1,http://127.0.0.1:2", GatewayPIDs: []int{1}},
		{Target: "http://127.0.0.1:1,nohost"},
		{Target: " , "},
		{Target: "http://127.0.0.1:1", Routing: "some"},
		{Target: "http://127.0.0.1:1", RedisCluster: true},
	} {
		bad.Scenario, bad.Conns = "idle", 1
		if err := bad.defaults(); err == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}

// Connection i goes to target i mod n, whichever client process holds it,
// and assigned counts them.
func TestConnectionsSpreadOverTargets(t *testing.T) {
	w := NewWorker(WorkerConfig{URLs: []string{"ws://a/websocket", "ws://b/websocket", "ws://c/websocket"}})
	per := map[string]int{}
	for i := range 100 {
		per[w.urlOf(i)]++
	}
	for j, u := range []string{"ws://a/websocket", "ws://b/websocket", "ws://c/websocket"} {
		if per[u] != assigned(100, 3, j) {
			t.Errorf("%s: %d connections, assigned %d", u, per[u], assigned(100, 3, j))
		}
	}
	if assigned(100, 3, 0) != 34 || assigned(100, 3, 2) != 33 || assigned(100000, 6, 5) != 16666 {
		t.Fatal("assigned")
	}
	if u := NewWorker(WorkerConfig{URL: "ws://one/websocket"}).urlOf(5); u != "ws://one/websocket" {
		t.Fatalf("one URL: %s", u)
	}
}

func TestParseHead(t *testing.T) {
	keys, rest, b, err := parseHead([]byte(`{"recipients":["k1","k2"],"data":{"s":1}}`))
	if err != nil || b || !reflect.DeepEqual(keys, []string{"k1", "k2"}) || string(rest) != `,"data":{"s":1}}` {
		t.Fatalf("%q %q %v %v", keys, rest, b, err)
	}
	if _, _, b, err := parseHead([]byte(`{"broadcast":true,"data":{}}`)); !b || err != nil {
		t.Fatal("broadcast", err)
	}
	for _, bad := range []string{`{"data":{}}`, `{"recipients":[k1]}`, `{"recipients":["k1"`, `{"recipients":["a\"b"]}`, `{"recipients":[""]}`} {
		if _, _, _, err := parseHead([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

// What a routed backend publishes for each kind of message.
func TestRoutePlan(t *testing.T) {
	personal := benchMessage(recipientHead(nil, "bench-", 7), 1, "")
	list := []byte(`{"recipients":["a","b","a"],"data":{"s":2}}`)
	bc := benchMessage([]byte(`{"broadcast":true`), 3, "")

	live := routePlan{broadcast: "wspubsub:b:{ch}"}
	got, err := live.plan(nil, personal)
	if err != nil || len(got) != 1 || got[0].fcall || got[0].channel != "wspubsub:k:{bench-7}" || string(got[0].payload) != string(personal) {
		t.Fatalf("personal: %+v %v", got, err)
	}
	got, _ = live.plan(nil, list)
	if len(got) != 2 || got[0].channel != "wspubsub:k:{a}" || string(got[0].payload) != `{"recipients":["a"],"data":{"s":2}}` ||
		got[1].channel != "wspubsub:k:{b}" || string(got[1].payload) != `{"recipients":["b"],"data":{"s":2}}` {
		t.Fatalf("list: %+v", got)
	}
	for _, p := range []routePlan{live, {broadcast: "wspubsub:b:{ch}", durable: true, cluster: true}} {
		got, _ = p.plan(nil, bc)
		if len(got) != 1 || got[0].fcall || got[0].channel != "wspubsub:b:{ch}" {
			t.Fatalf("broadcast (durable %v): %+v", p.durable, got)
		}
	}

	one := routePlan{durable: true}
	got, _ = one.plan(nil, list)
	if len(got) != 1 || !got[0].fcall || got[0].keys != nil || string(got[0].payload) != string(list) {
		t.Fatalf("durable on one Redis: %+v", got)
	}

	// In a cluster: one call per slot, naming that slot's history keys.
	var keys []string
	for i := range 50 {
		keys = append(keys, fmt.Sprintf("k%d", i))
	}
	msg := []byte(`{"recipients":["` + strings.Join(keys, `","`) + `"],"data":{}}`)
	got, _ = routePlan{durable: true, cluster: true}.plan(nil, msg)
	named := 0
	slots := map[uint16]bool{}
	for _, c := range got {
		if !c.fcall || len(c.keys) == 0 || string(c.payload) != string(msg) {
			t.Fatalf("cluster call %+v", c)
		}
		s := broker.Slot(c.keys[0])
		if slots[s] {
			t.Fatalf("slot %d called twice", s)
		}
		slots[s] = true
		for _, k := range c.keys {
			if broker.Slot(k) != s || !strings.HasPrefix(k, "wspubsub:h:{k") {
				t.Fatalf("key %s in the call of slot %d", k, s)
			}
			named++
		}
	}
	if named != 50 || len(got) != 50 { // 50 short keys: 50 distinct slots
		t.Fatalf("%d keys in %d calls", named, len(got))
	}
}

func TestStatCPUAndProcUsage(t *testing.T) {
	cpu, err := statCPU([]byte("123 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0"))
	if err != nil || cpu != 4 {
		t.Fatalf("%v %v", cpu, err)
	}
	if _, err := statCPU([]byte("garbage")); err == nil {
		t.Fatal("garbage accepted")
	}
	rss, _, err := procUsage(os.Getpid())
	if err != nil || rss <= 0 {
		t.Fatalf("own usage: %d %v", rss, err)
	}
	if got := redisProcs([]int{os.Getpid()}, readProcs([]int{os.Getpid()}), readProcs([]int{os.Getpid()}), readProcs([]int{os.Getpid()})); len(got) != 1 || got[0].CPU < 0 || got[0].RSSAfter <= 0 {
		t.Fatalf("%+v", got)
	}
}

func TestParseInfoAndDiff(t *testing.T) {
	before := parseInfo("# Server\r\nprocess_id:99\r\n# Stats\r\ntotal_commands_processed:10\r\ntotal_net_input_bytes:100\r\n" +
		"total_net_output_bytes:1000\r\n# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.0\r\n" +
		"# Commandstats\r\ncmdstat_spublish:calls=5,usec=50,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=1,usec=9\r\n")
	after := parseInfo("process_id:99\r\ntotal_commands_processed:1010\r\ntotal_net_input_bytes:200\r\ntotal_net_output_bytes:5000\r\n" +
		"used_cpu_sys:2.0\r\nused_cpu_user:3.0\r\nused_memory:4096\r\npubsubshard_channels:3\r\nconnected_clients:7\r\n" +
		"cmdstat_spublish:calls=1005,usec=9050,usec_per_call=9.00\r\ncmdstat_info:calls=1,usec=9\r\ncmdstat_fcall:calls=2,usec=30\r\n")
	got := diffShards(map[string]shardInfo{"a:1": before, "gone:2": before}, map[string]shardInfo{"a:1": after, "new:3": after})
	want := []RedisShard{{Addr: "a:1", PID: 99, CPU: 1.5, Commands: 1000, NetIn: 100, NetOut: 4000, UsedMemory: 4096, ShardChannels: 3, Clients: 7,
		Calls: map[string]CommandStat{"spublish": {Calls: 1000, Usec: 9000}, "fcall": {Calls: 2, Usec: 30}}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}

// gatewaysOn starts n in-process gateways on Redis (args name it) that
// know keys bench-0 … bench-(keys-1), each with its own node id.
func gatewaysOn(t *testing.T, n, keys int, args ...string) []string {
	t.Helper()
	store := keystore.NewMemory()
	for i := range keys {
		store.Add("bench-" + itoa(i))
	}
	var targets []string
	for i := range n {
		a := append([]string{"--listen", "127.0.0.1:0", "--node-id", fmt.Sprintf("gw%d", i+1)}, args...)
		cfg, err := config.ParseServe(a, func(string) string { return "" }, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		gw, err := gateway.New(cfg, gateway.Options{Store: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = gw.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		target := "http://" + gw.Addr().String()
		for deadline := time.Now().Add(patience); !gwReady(target); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("gateway not ready")
			}
		}
		targets = append(targets, target)
	}
	return targets
}

// checkMulti checks a multi-target run: nothing lost, each node's share of
// the connections, and (personal) that routing gave each node only its
// keys' messages.
func checkMulti(t *testing.T, what string, res Result, nodes int) {
	t.Helper()
	if res.Lost != 0 || res.Duplicates != 0 || res.OutOfOrder != 0 || res.Delivered != res.Expected || res.Expected == 0 {
		t.Fatalf("%s: %+v", what, res)
	}
	if len(res.Nodes) != nodes {
		t.Fatalf("%s: %d nodes in the result", what, len(res.Nodes))
	}
	var in, deliveries int64
	for i, n := range res.Nodes {
		if n.Assigned != assigned(res.Conns, nodes, i) || n.Connections != int64(n.Assigned) || n.RSSAfter <= 0 || n.CPU <= 0 {
			t.Fatalf("%s: node %d: %+v", what, i, n)
		}
		in += n.MessagesIn
		deliveries += n.Deliveries
	}
	if deliveries < res.Delivered {
		t.Fatalf("%s: the nodes counted %d deliveries, the clients %d", what, deliveries, res.Delivered)
	}
	// Without routing every node would receive every message (nodes ×
	// published); routed, each gets its keys' (about published in all,
	// plus the nodes' own subscription probes).
	if !res.Durable && strings.HasPrefix(what, "personal") && in >= res.Published*int64(nodes)*3/4 {
		t.Fatalf("%s: %d messages in over the nodes for %d published: not routed", what, in, res.Published)
	}
}

// Routed publishing over several gateways on one Redis (--routing keys).
func TestMultiTargetRoutedOnOneRedis(t *testing.T) {
	r := testenv.Redis(t)
	targets := gatewaysOn(t, 3, 60, "--redis-url", r.URL(), "--routing", "keys", "--channel", "bench_ch")
	for _, sc := range []Config{
		{Scenario: "personal", Messages: 3000},
		{Scenario: "personal", Messages: 1000, Durable: true, Resume: true},
		{Scenario: "broadcast", Messages: 30},
		{Scenario: "broadcast", Messages: 20, BroadcastList: true},
	} {
		sc.Target, sc.Conns, sc.RedisURL, sc.Routing, sc.Channel, sc.Drain = strings.Join(targets, ","), 60, r.URL(), "keys", "bench_ch", patience
		sc.RedisPIDs = []int{os.Getpid()} // any process: /proc is what is read
		res, err := Run(context.Background(), sc, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		what := fmt.Sprintf("%s durable=%v list=%v", sc.Scenario, sc.Durable, sc.BroadcastList)
		checkMulti(t, what, res, 3)
		if len(res.RedisShards) != 1 || res.RedisShards[0].Commands <= 0 || len(res.RedisProcs) != 1 {
			t.Fatalf("%s: redis %+v %+v", what, res.RedisShards, res.RedisProcs)
		}
		cmd := "spublish"
		if sc.Durable {
			cmd = "fcall"
			var resumed int64
			for _, n := range res.Nodes {
				resumed += n.Events[`wspubsub_resumes_total{outcome="from_now"}`]
			}
			if resumed != int64(res.Conns) {
				t.Fatalf("%s: %d resumes from now over the nodes for %d clients", what, resumed, res.Conns)
			}
		}
		if res.RedisShards[0].Calls[cmd].Calls < res.Published {
			t.Fatalf("%s: %d %s for %d messages", what, res.RedisShards[0].Calls[cmd].Calls, cmd, res.Published)
		}
	}
}

// The same over a 3-master Redis Cluster (--redis-cluster): SPUBLISH routed
// by slot, durable FCALLs one per slot, each master's figures.
func TestMultiTargetOnARedisCluster(t *testing.T) {
	c := testenv.RedisCluster(t, 3, 0)
	targets := gatewaysOn(t, 2, 40, "--redis-cluster", "--redis-url", c.Seeds(), "--channel", "bench_ch")
	for _, sc := range []Config{
		{Scenario: "personal", Messages: 2000},
		{Scenario: "personal", Messages: 500, Durable: true, Resume: true},
		{Scenario: "broadcast", Messages: 20},
		{Scenario: "broadcast", Messages: 10, BroadcastList: true, Durable: true, Resume: true},
		{Scenario: "personal", Messages: 500, Routing: "all"}, // plain PUBLISH, forwarded by the node holding the lease
	} {
		sc.Target, sc.Conns, sc.RedisURL, sc.RedisCluster, sc.Channel, sc.Drain = strings.Join(targets, ","), 40, c.Seeds(), true, "bench_ch", patience
		res, err := Run(context.Background(), sc, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		what := fmt.Sprintf("%s durable=%v list=%v", sc.Scenario, sc.Durable, sc.BroadcastList)
		checkMulti(t, what, res, 2)
		if len(res.RedisShards) != 3 {
			t.Fatalf("%s: %d shards: %+v", what, len(res.RedisShards), res.RedisShards)
		}
		var spublish, fcall int64
		for _, s := range res.RedisShards {
			spublish += s.Calls["spublish"].Calls
			fcall += s.Calls["fcall"].Calls
		}
		if sc.Durable && fcall < res.Published {
			t.Fatalf("%s: %d FCALLs for %d messages", what, fcall, res.Published)
		}
		if sc.Routing == "all" {
			var publish, forwarded int64
			for _, s := range res.RedisShards {
				publish += s.Calls["publish"].Calls
			}
			for _, n := range res.Nodes {
				forwarded += n.Events["wspubsub_forwarded_total"]
			}
			if publish != res.Published || forwarded != res.Published {
				t.Fatalf("%s: %d PUBLISH, %d forwarded for %d messages", what, publish, forwarded, res.Published)
			}
		} else if !sc.Durable && spublish < res.Published {
			t.Fatalf("%s: %d SPUBLISH for %d messages", what, spublish, res.Published)
		}
		if sc.Durable && res.Redis == nil {
			t.Fatalf("%s: no history figures", what)
		}
	}
}

// A client closed with 1013 (not admitted for now) connects again, as a
// client library does; other close codes end it.
func TestReconnectsAfterTryAgain(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var queries []string // what each connection asked for
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var query string
				u := ws.Upgrader{OnRequest: func(uri []byte) error { query = string(uri); return nil }}
				if _, err := u.Upgrade(c); err != nil {
					return
				}
				mu.Lock()
				queries = append(queries, query)
				n := len(queries)
				mu.Unlock()
				switch {
				case strings.Contains(query, "k-1"): // another code: no retry
					_ = ws.WriteFrame(c, ws.NewCloseFrame(ws.NewCloseFrameBody(4001, "")))
				case n <= 2: // k-0's first connection, and k-0's or k-1's
					_ = ws.WriteFrame(c, ws.NewCloseFrame(ws.NewCloseFrameBody(1013, "try again later")))
				default:
					_ = ws.WriteFrame(c, ws.NewTextFrame([]byte(`{"data":{"s":0,"t":1}}`)))
					_, _ = io.Copy(io.Discard, c) // until the client goes
				}
			}()
		}
	}()
	w := NewWorker(WorkerConfig{URL: "ws://" + ln.Addr().String() + "/websocket", KeyPrefix: "k-", Count: 2, Messages: 1})
	if f := w.Connect(); f != 0 {
		t.Fatalf("%d failures", f)
	}
	for deadline := time.Now().Add(patience); w.Received() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	st := w.Stop()
	if st.Received != 1 || st.Retried < 1 || st.ServerClosed < 2 {
		t.Fatalf("%+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	k1 := 0
	for _, q := range queries {
		if strings.Contains(q, "k-1") {
			k1++
		}
	}
	if k1 != 1 {
		t.Fatalf("k-1 connected %d times: %q", k1, queries)
	}
}
