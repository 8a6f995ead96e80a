package testenv

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cluster is a local Redis Cluster: masters holding every slot, and
// replicas, each a redis-server on a free loopback port.
type Cluster struct {
	t        testing.TB
	Masters  []*Service
	Replicas []*Service // Replicas[i] replicates Masters[i % len(Masters)]
}

// RedisCluster starts a Redis Cluster of masters (slots spread evenly by
// redis-cli --cluster create) and replicas, and waits until every node
// reports the cluster healthy. Node timeout 1 s: a killed master's replica
// takes over within a few seconds.
func RedisCluster(t testing.TB, masters, replicas int) *Cluster {
	t.Helper()
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		missing(t, "redis-cli")
	}
	node := func() *Service {
		return redisOn(t, freeClusterPort, "--appendonly", "no", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0")
	}
	c := &Cluster{t: t}
	for range masters {
		c.Masters = append(c.Masters, node())
	}
	args := []string{"--cluster", "create"}
	for _, m := range c.Masters {
		args = append(args, m.Addr())
	}
	if out, err := exec.Command(cli, append(args, "--cluster-yes")...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for i := range replicas {
		r := node()
		m := c.Masters[i%masters]
		c.Replicas = append(c.Replicas, r)
		c.cmd(r, "cluster", "meet", "127.0.0.1", strconv.Itoa(m.Port))
		id := strings.TrimSpace(c.cmd(m, "cluster", "myid"))
		c.eventually(30*time.Second, "the replica knows its master", func() bool {
			return strings.Contains(c.cmd(r, "cluster", "nodes"), id)
		})
		c.eventually(30*time.Second, "the replica replicates", func() bool {
			return strings.HasPrefix(strings.TrimSpace(c.tryCmd(r, "cluster", "replicate", id)), "OK")
		})
	}
	c.WaitHealthy()
	return c
}

// Seeds is the cluster's addresses for --redis-url with --redis-cluster.
func (c *Cluster) Seeds() string {
	var out []string
	for _, m := range c.Masters {
		out = append(out, "redis://"+m.Addr())
	}
	return strings.Join(out, ",")
}

// WaitHealthy waits until every running node reports cluster_state:ok and
// every node that is a replica (a former master back after a failover
// too) is connected to its master.
func (c *Cluster) WaitHealthy() {
	c.t.Helper()
	c.eventually(60*time.Second, "the cluster healthy", func() bool {
		for _, s := range append(append([]*Service(nil), c.Masters...), c.Replicas...) {
			if !s.running() {
				continue
			}
			if !strings.Contains(c.tryCmd(s, "cluster", "info"), "cluster_state:ok") {
				return false
			}
		}
		for _, r := range append(append([]*Service(nil), c.Masters...), c.Replicas...) {
			if r.running() && strings.HasPrefix(c.tryCmd(r, "role"), "slave") &&
				!strings.Contains(c.tryCmd(r, "info", "replication"), "master_link_status:up") {
				return false
			}
		}
		return true
	})
}

// Slot asks the cluster for key's hash slot.
func (c *Cluster) Slot(key string) int {
	n, err := strconv.Atoi(strings.TrimSpace(c.cmd(c.anyRunning(), "cluster", "keyslot", key)))
	if err != nil {
		c.t.Fatalf("cluster keyslot %q: %v", key, err)
	}
	return n
}

// MasterOf returns the running node that serves key's slot as a master.
func (c *Cluster) MasterOf(key string) *Service {
	c.t.Helper()
	slot := c.Slot(key)
	for _, s := range append(append([]*Service(nil), c.Masters...), c.Replicas...) {
		if !s.running() || !strings.HasPrefix(c.tryCmd(s, "role"), "master") {
			continue
		}
		for _, line := range strings.Split(c.tryCmd(s, "cluster", "nodes"), "\n") {
			f := strings.Fields(line)
			if len(f) < 9 || !strings.Contains(f[2], "myself") {
				continue
			}
			for _, r := range f[8:] {
				lo, hi, ok := strings.Cut(r, "-")
				if !ok {
					hi = lo
				}
				a, err1 := strconv.Atoi(lo)
				b, err2 := strconv.Atoi(hi)
				if err1 == nil && err2 == nil && slot >= a && slot <= b {
					return s
				}
			}
		}
	}
	c.t.Fatalf("no running master serves slot %d", slot)
	return nil
}

// ReplicaOf returns the replica of master m, or nil.
func (c *Cluster) ReplicaOf(m *Service) *Service {
	for i, r := range c.Replicas {
		if c.Masters[i%len(c.Masters)] == m {
			return r
		}
	}
	return nil
}

// Failover kills master m (SIGKILL) and waits until its replica has taken
// over and the cluster is healthy again.
func (c *Cluster) Failover(m *Service) {
	c.t.Helper()
	r := c.ReplicaOf(m)
	if r == nil {
		c.t.Fatal("Failover: the master has no replica")
	}
	m.Stop()
	c.eventually(60*time.Second, "the replica promoted", func() bool {
		return strings.HasPrefix(c.tryCmd(r, "role"), "master")
	})
	c.WaitHealthy()
}

func (c *Cluster) anyRunning() *Service {
	for _, s := range append(append([]*Service(nil), c.Masters...), c.Replicas...) {
		if s.running() {
			return s
		}
	}
	c.t.Fatal("no cluster node is running")
	return nil
}

// cmd runs redis-cli against s and fails the test on an error.
func (c *Cluster) cmd(s *Service, args ...string) string {
	c.t.Helper()
	out, err := exec.Command("redis-cli", append([]string{"-p", strconv.Itoa(s.Port)}, args...)...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("redis-cli %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// tryCmd runs redis-cli against s; "" on an error.
func (c *Cluster) tryCmd(s *Service, args ...string) string {
	out, err := exec.Command("redis-cli", append([]string{"-p", strconv.Itoa(s.Port)}, args...)...).Output()
	if err != nil {
		return ""
	}
	return string(out)
}

func (c *Cluster) eventually(d time.Duration, what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("redis cluster: %s: not within %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *Service) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// MoveSlot hands key's slot, holding no keys, to master to (CLUSTER
// SETSLOT … IMPORTING / MIGRATING / NODE on every master), as a
// resharding does, and waits until the cluster agrees.
func (c *Cluster) MoveSlot(key string, to *Service) {
	c.t.Helper()
	slot := strconv.Itoa(c.Slot(key))
	from := c.MasterOf(key)
	fromID := strings.TrimSpace(c.cmd(from, "cluster", "myid"))
	toID := strings.TrimSpace(c.cmd(to, "cluster", "myid"))
	c.cmd(to, "cluster", "setslot", slot, "importing", fromID)
	c.cmd(from, "cluster", "setslot", slot, "migrating", toID)
	for _, m := range []*Service{to, from} {
		c.cmd(m, "cluster", "setslot", slot, "node", toID)
	}
	for _, m := range c.Masters {
		if m != to && m != from && m.running() {
			c.cmd(m, "cluster", "setslot", slot, "node", toID)
		}
	}
	c.eventually(30*time.Second, "the slot moved", func() bool { return c.MasterOf(key) == to })
	c.WaitHealthy()
}
