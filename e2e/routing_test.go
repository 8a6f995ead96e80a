package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/gateway"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

// node starts one more gateway beside s's, on the same Redis and MongoDB,
// with s's flags and extra ones (a later flag wins).
func (s *stack) node(extra ...string) *gateway.Gateway {
	s.t.Helper()
	gw, _ := startInProcess(s.t, gateway.Options{Logger: testenv.Logger(s.t)}, append(append([]string(nil), s.args...), extra...)...)
	return gw
}

// With --routing keys, a message reaches the key's connection on node 2
// whichever way it is published (POST /publish on node 1, or a plain
// PUBLISH on the channel, forwarded by the lease holder), and nodes 1 and 3
// never receive it: their messages-in counters do not move. A broadcast
// reaches every node.
//
// On one Redis and on a 3-master Redis Cluster (sharded pub/sub).
func TestRoutingDeliversOnlyToTheKeysNode(t *testing.T) {
	for _, redis := range []string{"single", "cluster"} {
		for _, history := range []string{"100", "0"} {
			t.Run(redis+"/history-size="+history, func(t *testing.T) {
				args := []string{"--routing", "keys", "--node-id", "n1", "--history-size", history}
				var servers []*testenv.Service
				if redis == "cluster" {
					c := testenv.RedisCluster(t, 3, 0)
					servers = c.Masters
					args = append(args, "--redis-url", c.Seeds(), "--redis-cluster")
				} else {
					servers = []*testenv.Service{testenv.Redis(t)}
				}
				routingScenario(t, newStackOn(t, servers[0], args, "k2", "k3"), servers)
			})
		}
	}
}

// routingScenario runs the test on s (node 1) and two more nodes; servers
// are the Redis servers (a cluster's masters: a plain SUBSCRIBE is on one
// of them).
func routingScenario(t *testing.T, s *stack, servers []*testenv.Service) {
	n2 := s.node("--node-id", "n2")
	n3 := s.node("--node-id", "n3")
	c2 := mustDial(t, "ws://"+n2.Addr().String()+s.cfg.Path+"?k2")
	eventually(t, 5*time.Second, "k2 admitted on node 2", func() bool { return len(n2.Hub().Sessions("k2")) == 1 })
	in := func(g *gateway.Gateway) float64 { return testutil.ToFloat64(g.Metrics().MessagesIn) }
	in1, in3 := in(s.gw), in(n3)

	rsPost(t, s, envelope(`{"n":1}`, "k2", "nobody"), "")
	c2.expect(`{"data":{"n":1}}`)
	// A plain PUBLISH: the lease holder forwards it, once it listens.
	eventually(t, 20*time.Second, "a forwarder subscribed", func() bool {
		var subs int64
		for _, srv := range servers {
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
			n, _ := rdb.PubSubNumSub(context.Background(), s.cfg.Channel).Result()
			rdb.Close()
			subs += n[s.cfg.Channel]
		}
		return subs == 1
	})
	s.publish(envelope(`{"n":2}`, "k2"))
	c2.expect(`{"data":{"n":2}}`)
	if in(n2) < 2 {
		t.Fatalf("node 2 received %v messages", in(n2))
	}
	if a, b := in(s.gw), in(n3); a != in1 || b != in3 {
		t.Fatalf("nodes 1 and 3 received messages for a key they do not hold: %v → %v, %v → %v", in1, a, in3, b)
	}

	// A key connecting later on node 3 is routed there from its
	// admission on, and its first message is not lost.
	c3 := mustDial(t, "ws://"+n3.Addr().String()+s.cfg.Path+"?k3")
	eventually(t, 5*time.Second, "k3 admitted on node 3", func() bool { return len(n3.Hub().Sessions("k3")) == 1 })
	rsPost(t, s, envelope(`3`, "k3"), "")
	c3.expect(`{"data":3}`)

	rsPost(t, s, `{"broadcast":true,"data":4}`, "")
	c2.expect(`{"data":4}`)
	c3.expect(`{"data":4}`)
	eventually(t, 5*time.Second, "the broadcast on node 1", func() bool { return in(s.gw) == in1+1 })
	fwd := 0.0
	for _, g := range []*gateway.Gateway{s.gw, n2, n3} {
		fwd += testutil.ToFloat64(g.Metrics().Forwarded)
	}
	if fwd != 1 {
		t.Fatalf("forwarded %v plain publishes, want 1 (one lease holder)", fwd)
	}
	body := metricsOf(t, n2)
	if !strings.Contains(body, "wspubsub_routed_keys 1") {
		t.Fatalf("node 2's routed keys gauge: %s", grepLines(body, "wspubsub_routed_keys"))
	}
}

func metricsOf(t *testing.T, g *gateway.Gateway) string {
	t.Helper()
	resp, err := http.Get("http://" + g.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return fmt.Sprint(out)
}
