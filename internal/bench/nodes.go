package bench

// Several gateways (--target a,b,c): connection i goes to target i mod n,
// and each node's memory, CPU and counters are read at the start, when
// publishing starts and at the end; with --redis-pids each Redis server's
// CPU from /proc, and over Redis each server's (each cluster master's)
// commands, traffic and CPU from INFO, so that a run tells what one
// delivery costs a node and what one message costs a shard.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// SplitList splits a comma-separated flag value, dropping blanks.
func SplitList(s string) []string {
	var out []string
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// ParsePIDs parses a comma-separated list of process ids.
func ParsePIDs(s string) ([]int, error) {
	var out []int
	for _, v := range SplitList(s) {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad process id %q", v)
		}
		out = append(out, n)
	}
	return out, nil
}

// assigned is how many of conns connections go to node j of n (connection
// i goes to node i mod n).
func assigned(conns, n, j int) int {
	c := conns / n
	if j < conns%n {
		c++
	}
	return c
}

// gateways reads every target; its totals sum over them, so one target
// reads as it always did.
type gateways []*gatewayProbe

func newGateways(cfg Config) gateways {
	out := make(gateways, len(cfg.Targets))
	for i, t := range cfg.Targets {
		pid := 0
		if i < len(cfg.GatewayPIDs) {
			pid = cfg.GatewayPIDs[i]
		}
		out[i] = newGatewayProbe(t, pid, cfg.Token)
	}
	return out
}

func (gs gateways) read() (rss int64, cpu float64) {
	for _, g := range gs {
		r, c := g.read()
		rss, cpu = rss+r, cpu+c
	}
	return rss, cpu
}

func (gs gateways) values(names ...string) []float64 {
	out := make([]float64, len(names))
	for _, g := range gs {
		for i, v := range g.values(names...) {
			out[i] += v
		}
	}
	return out
}

func (gs gateways) metric(name string) float64 { return gs.values(name)[0] }

// nodeMetrics are the per-node counters read with each sample: messages
// from Redis, deliveries queued to connections, socket writes and frames,
// live connections of the run's transport.
func nodeMetrics(transport string) []string {
	return []string{"wspubsub_messages_in_total", "wspubsub_deliveries_total", metricSocketWrites, metricFramesWritten,
		`wspubsub_connections{transport="` + transport + `"}`}
}

// nodeEvents are the counters, every label included, whose changes a
// node's result lists: why connections ended or were refused, resumes by
// outcome, lost subscriptions, drops, forwarded plain messages.
func nodeEvents() []string {
	return []string{"wspubsub_disconnects_total", "wspubsub_rejections_total", "wspubsub_resumes_total",
		"wspubsub_broker_reconnects_total", "wspubsub_subscription_probes_lost_total", "wspubsub_drops_total",
		"wspubsub_forwarded_total"}
}

type nodeSample struct {
	rss      int64
	cpu      float64
	counters []float64          // nodeMetrics
	events   map[string]float64 // nodeEvents' series
}

func (gs gateways) samples(transport string) []nodeSample {
	out := make([]nodeSample, len(gs))
	for i, g := range gs {
		out[i].rss, out[i].cpu = g.read()
		out[i].counters = g.values(nodeMetrics(transport)...)
		out[i].events = g.series(nodeEvents()...)
	}
	return out
}

func sumSamples(s []nodeSample) (rss int64, cpu float64) {
	for _, n := range s {
		rss, cpu = rss+n.rss, cpu+n.cpu
	}
	return rss, cpu
}

// NodeResult is one gateway's share of a multi-target run.
type NodeResult struct {
	Target string `json:"target"`
	PID    int    `json:"pid,omitempty"`
	// Assigned is the connections the tool opened to it; Connections its
	// own count of live ones (wspubsub_connections) at the end.
	Assigned     int     `json:"conns"`
	Connections  int64   `json:"connections"`
	RSSBefore    int64   `json:"rss_before"`
	RSSAfter     int64   `json:"rss_after"`
	BytesPerConn float64 `json:"bytes_per_conn,omitempty"` // idle: RSS growth over its connections
	// CPU is the whole run's (connects included), CPUPublish from the
	// first publish to the last delivery.
	CPU        float64 `json:"cpu_s"`
	CPUPublish float64 `json:"cpu_publish_s"`
	MessagesIn int64   `json:"messages_in"` // Δ wspubsub_messages_in_total: what Redis sent it
	Deliveries int64   `json:"deliveries"`  // Δ wspubsub_deliveries_total
	// CPUPerDelivery is CPUPublish / Deliveries, in microseconds.
	CPUPerDelivery float64 `json:"cpu_us_per_delivery,omitempty"`
	SocketWrites   int64   `json:"socket_writes,omitempty"`
	FramesWritten  int64   `json:"frames_written,omitempty"`
	// Events are the nodeEvents series that moved over the whole run
	// (connects included), e.g. wspubsub_disconnects_total{reason="…"}.
	Events map[string]int64 `json:"events,omitempty"`
}

// nodeResults compares each node's samples at the start (s0), when
// publishing started (sp) and at the end (s1).
func nodeResults(cfg Config, s0, sp, s1 []nodeSample) []NodeResult {
	out := make([]NodeResult, len(cfg.Targets))
	for i := range out {
		d := func(k int) int64 { return int64(s1[i].counters[k] - sp[i].counters[k]) }
		n := NodeResult{Target: cfg.Targets[i], Assigned: assigned(cfg.Conns, len(cfg.Targets), i),
			Connections: int64(s1[i].counters[4]), RSSBefore: s0[i].rss, RSSAfter: s1[i].rss,
			CPU: s1[i].cpu - s0[i].cpu, CPUPublish: s1[i].cpu - sp[i].cpu,
			MessagesIn: d(0), Deliveries: d(1), SocketWrites: d(2), FramesWritten: d(3)}
		if i < len(cfg.GatewayPIDs) {
			n.PID = cfg.GatewayPIDs[i]
		}
		for name, v := range s1[i].events {
			if d := int64(v - s0[i].events[name]); d != 0 {
				if n.Events == nil {
					n.Events = map[string]int64{}
				}
				n.Events[name] = d
			}
		}
		if n.Deliveries > 0 {
			n.CPUPerDelivery = n.CPUPublish / float64(n.Deliveries) * 1e6
		}
		if cfg.Scenario == "idle" && n.RSSBefore > 0 {
			if c := n.Connections; c > 0 {
				n.BytesPerConn = float64(n.RSSAfter-n.RSSBefore) / float64(c)
			}
		}
		out[i] = n
	}
	return out
}

// RedisProc is one Redis server's process (--redis-pids), from /proc.
type RedisProc struct {
	PID        int     `json:"pid"`
	CPU        float64 `json:"cpu_s"`         // the whole run
	CPUPublish float64 `json:"cpu_publish_s"` // first publish → last delivery
	RSSBefore  int64   `json:"rss_before"`
	RSSAfter   int64   `json:"rss_after"`
}

type procSample struct {
	rss int64
	cpu float64
}

func readProcs(pids []int) []procSample {
	out := make([]procSample, len(pids))
	for i, pid := range pids {
		out[i].rss, out[i].cpu, _ = procUsage(pid) // gone: zeros, shown as such
	}
	return out
}

func redisProcs(pids []int, p0, pp, p1 []procSample) []RedisProc {
	out := make([]RedisProc, len(pids))
	for i, pid := range pids {
		out[i] = RedisProc{PID: pid, CPU: p1[i].cpu - p0[i].cpu, CPUPublish: p1[i].cpu - pp[i].cpu,
			RSSBefore: p0[i].rss, RSSAfter: p1[i].rss}
	}
	return out
}

// RedisShard is one Redis server (a cluster master) over the publish phase
// (first publish → last delivery), from INFO: what the run's messages cost
// it, the gateways' own traffic (presence, probes) included.
type RedisShard struct {
	Addr     string  `json:"addr"`
	PID      int64   `json:"pid"`      // INFO server process_id
	CPU      float64 `json:"cpu_s"`    // Δ used_cpu_sys + used_cpu_user
	Commands int64   `json:"commands"` // Δ total_commands_processed
	// Calls is, per command that ran, Δ calls and Δ microseconds spent
	// (INFO commandstats; a function's inner commands count too).
	Calls         map[string]CommandStat `json:"calls,omitempty"`
	NetIn         int64                  `json:"net_input_bytes"`
	NetOut        int64                  `json:"net_output_bytes"`
	UsedMemory    int64                  `json:"used_memory_after"`
	ShardChannels int64                  `json:"pubsubshard_channels"` // sharded channels subscribed, at the end
	Clients       int64                  `json:"connected_clients"`    // at the end
}

// CommandStat is one command's calls and time.
type CommandStat struct {
	Calls int64 `json:"calls"`
	Usec  int64 `json:"usec"`
}

// shardInfo is one server's INFO, the fields RedisShard reads.
type shardInfo struct {
	pid, commands, netIn, netOut, used, shardChannels, clients int64
	cpu                                                        float64
	calls                                                      map[string]CommandStat
}

// parseInfo reads INFO server, cpu, stats, memory, clients and commandstats.
func parseInfo(s string) shardInfo {
	in := shardInfo{calls: map[string]CommandStat{}}
	num := func(v string) int64 { n, _ := strconv.ParseInt(v, 10, 64); return n }
	for line := range strings.SplitSeq(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch k {
		case "process_id":
			in.pid = num(v)
		case "total_commands_processed":
			in.commands = num(v)
		case "total_net_input_bytes":
			in.netIn = num(v)
		case "total_net_output_bytes":
			in.netOut = num(v)
		case "used_memory":
			in.used = num(v)
		case "pubsubshard_channels":
			in.shardChannels = num(v)
		case "connected_clients":
			in.clients = num(v)
		case "used_cpu_sys", "used_cpu_user":
			f, _ := strconv.ParseFloat(v, 64)
			in.cpu += f
		default:
			name, ok := strings.CutPrefix(k, "cmdstat_")
			if !ok {
				continue
			}
			var cs CommandStat
			for kv := range strings.SplitSeq(v, ",") {
				if c, ok := strings.CutPrefix(kv, "calls="); ok {
					cs.Calls = num(c)
				} else if u, ok := strings.CutPrefix(kv, "usec="); ok {
					cs.Usec = num(u)
				}
			}
			in.calls[name] = cs
		}
	}
	return in
}

// shardProbe reads INFO from every server: the one Redis, or each master
// of a Redis Cluster.
type shardProbe struct {
	c redis.UniversalClient
}

func newShardProbe(ctx context.Context, cfg Config) (*shardProbe, error) {
	c, err := redisUniversal(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &shardProbe{c: c}, nil
}

func (p *shardProbe) close() { p.c.Close() }

// eachServer runs f on the one server, or on every master of a cluster (at
// once).
func eachServer(ctx context.Context, c redis.UniversalClient, f func(context.Context, *redis.Client) error) error {
	switch c := c.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, f)
	case *redis.Client:
		return f(ctx, c)
	}
	return errors.New("unknown Redis client")
}

func (p *shardProbe) snapshot(ctx context.Context) (map[string]shardInfo, error) {
	out := map[string]shardInfo{}
	var mu sync.Mutex
	err := eachServer(ctx, p.c, func(ctx context.Context, c *redis.Client) error {
		s, err := c.Info(ctx, "server", "clients", "memory", "stats", "cpu", "commandstats").Result()
		if err != nil {
			return fmt.Errorf("INFO on %s: %w", c.Options().Addr, err)
		}
		mu.Lock()
		out[c.Options().Addr] = parseInfo(s)
		mu.Unlock()
		return nil
	})
	return out, err
}

// diffShards is each server's change between two snapshots (servers in
// both, by address).
func diffShards(before, after map[string]shardInfo) []RedisShard {
	var out []RedisShard
	for addr, a := range after {
		b, ok := before[addr]
		if !ok {
			continue
		}
		s := RedisShard{Addr: addr, PID: a.pid, CPU: a.cpu - b.cpu, Commands: a.commands - b.commands,
			NetIn: a.netIn - b.netIn, NetOut: a.netOut - b.netOut, UsedMemory: a.used,
			ShardChannels: a.shardChannels, Clients: a.clients}
		for name, cs := range a.calls {
			if d := (CommandStat{Calls: cs.Calls - b.calls[name].Calls, Usec: cs.Usec - b.calls[name].Usec}); d.Calls > 0 {
				if s.Calls == nil {
					s.Calls = map[string]CommandStat{}
				}
				s.Calls[name] = d
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}
