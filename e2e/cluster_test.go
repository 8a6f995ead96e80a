package e2e

import (
	"testing"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// TestChaosClusterFailover is the chaos test on a Redis Cluster: 3 masters
// each with a replica, 3 gateways with per-key routing (--redis-cluster),
// resuming clients over every transport dropping and resuming at random,
// publishers retrying with idempotency keys, and a publish acknowledged
// only once a replica has it (--redis-wait-replicas 1). Under load a
// master is SIGKILLed; its replica is promoted and the old master comes
// back as the new one's replica. Every client must end with every
// acknowledged message exactly once and in order.
func TestChaosClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos test skipped in -short mode")
	}
	c := testenv.RedisCluster(t, 3, 3)
	const nMsgs = 3000
	runChaos(t, chaosPlan{nKeys: 24, nMsgs: nMsgs, rate: 300, publishers: 6, gateways: 3,
		args: []string{"--redis-url", c.Seeds(), "--redis-cluster", "--redis-wait-replicas", "1"},
		chaos: func(r *chaosRun) {
			r.waitAcked(nMsgs / 3)
			victim := c.Masters[r.rng.Intn(len(c.Masters))]
			r.timeline.add("master :%d SIGKILLed", victim.Port)
			r.t.Logf("master :%d SIGKILLed after %d messages acknowledged", victim.Port, r.acked())
			c.Failover(victim)
			r.timeline.add("its replica promoted, the cluster healthy")
			r.t.Logf("replica promoted; %d acknowledged", r.acked())
			victim.Start()
			c.WaitHealthy()
			r.timeline.add("the old master back as a replica")
			r.t.Logf("old master back as a replica; %d acknowledged", r.acked())
		}})
}
