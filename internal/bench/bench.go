// Package bench is wspubsub's load tool (`wspubsub bench`): it opens many
// client connections to a gateway, publishes numbered, time-stamped
// messages, and reports what arrived — delivered, lost, duplicated, out of
// order, publish→receive latency — next to the gateway's memory and CPU and
// its own CPU, so a reader can tell who was the bottleneck.
//
// With --durable it publishes through the gateways' history (FCALL
// wspubsub_publish, or POST /publish), its clients resume (they connect with
// since= and follow the ids of the frames they receive), and it reports the
// Redis memory the history holds; the resume scenario takes every client
// away while messages are published for it, then measures their catch-up.
//
// With --calibrate (or --scenario ceiling) it first measures this
// machine's ceiling over loopback connections to itself (ceiling.go) and
// reports the run's rate as a ratio to it.
//
// It only ever contacts the given target, Redis and MongoDB (and its own
// loopback listener while calibrating); every loop is bounded in count and
// time. It must not import the gateway's packages: it
// measures the gateway from outside, as a user's deployment would be.
package bench

import (
	"context"
	"fmt"
	"io"
	"syscall"
	"time"
)

// Run performs one run and writes the human summary and the JSON line.
func Run(ctx context.Context, cfg Config, out io.Writer) (Result, error) {
	if err := cfg.defaults(); err != nil {
		return Result{}, err
	}
	start := time.Now()
	res := Result{Scenario: cfg.Scenario, Transport: cfg.Transport, Conns: cfg.Conns, Durable: cfg.Durable, Resuming: cfg.Resume}
	var calCPU float64 // the calibration's CPU, not the scenario's
	if cfg.Calibrate || cfg.Scenario == "ceiling" {
		c, err := measureCeiling(ctx, cfg)
		if err != nil {
			return res, err
		}
		res.Ceiling, calCPU = c, ownCPU()
		if cfg.Scenario == "ceiling" {
			res.Conns, res.Connected, res.Procs = c.Conns, c.Conns, c.Procs
			res.ClientCPU, res.WallSeconds = calCPU, time.Since(start).Seconds()
			report(out, res)
			return res, nil
		}
	}
	g := newGateways(cfg)
	nodes0 := g.samples(cfg.Transport)
	procs0 := readProcs(cfg.RedisPIDs)
	rss0, cpu0 := sumSamples(nodes0)
	res.GatewayRSSBefore = rss0

	if err := provision(ctx, cfg); err != nil {
		return res, err
	}
	warm, rssWarm, err := warmUp(ctx, cfg, g, rss0)
	if err != nil {
		return res, err
	}
	defer stopAll(warm)
	workers, err := startWorkers(cfg)
	if err != nil {
		return res, err
	}
	res.Procs = len(workers)
	connectStart := time.Now()
	var failures int
	for _, w := range workers {
		f, err := w.ready()
		if err != nil {
			stopAll(workers)
			return res, err
		}
		failures += f
	}
	res.ConnectFailures = failures
	res.Connected = cfg.Conns - failures
	res.ConnectRate = float64(res.Connected) / time.Since(connectStart).Seconds()

	stable := cfg.Conns
	if cfg.Scenario == "churn" {
		stable = cfg.Conns - int(float64(cfg.Conns)*churnShare)
	}
	res.SlowConns = int(float64(cfg.Conns) * cfg.SlowShare)
	readers := stable - res.SlowConns // messages to these are expected
	slow0 := g.metric("wspubsub_disconnects_total{reason=\"too_slow\"}")
	pub, err := newPublisher(ctx, cfg)
	if err != nil {
		stopAll(workers)
		return res, err
	}
	defer pub.close()
	var mem *redisProbe
	if cfg.Durable && cfg.RedisURL != "" {
		if mem, err = newRedisProbe(ctx, cfg); err != nil {
			stopAll(workers)
			return res, err
		}
		defer mem.close()
		if res.Redis, err = mem.before(ctx); err != nil {
			stopAll(workers)
			return res, err
		}
	}
	received := func() int64 {
		var n int64
		for _, w := range workers {
			n += w.received()
		}
		return n
	}

	var shards *shardProbe
	var shards0 map[string]shardInfo
	if cfg.RedisURL != "" {
		if shards, err = newShardProbe(ctx, cfg); err != nil {
			stopAll(workers)
			return res, err
		}
		defer shards.close()
		if shards0, err = shards.snapshot(ctx); err != nil {
			stopAll(workers)
			return res, err
		}
	}
	fw0 := g.values(metricSocketWrites, metricFramesWritten)
	nodesP, procsP := g.samples(cfg.Transport), readProcs(cfg.RedisPIDs)
	gcCtx, stopGC := context.WithCancel(ctx)
	defer stopGC()
	if cfg.Scenario == "idle" {
		stopGC() // nothing to match: leave the gateway alone
	}
	gcAt, gcDone := sampleGC(gcCtx, g)
	pubStart := time.Now()
	switch cfg.Scenario {
	case "idle":
		time.Sleep(min(cfg.Duration, 2*time.Minute)) // hold, and let the gateway settle
	case "personal":
		res.Published, res.Expected, err = publishAll(ctx, pub, cfg, stable, readers, 0, received, 1)
	case "broadcast":
		res.Published, _, err = publishAll(ctx, pub, cfg, stable, readers, 0, received, int64(res.Connected))
		res.Expected = res.Published * int64(res.Connected-res.SlowConns)
	case "rate", "churn":
		res.Published, res.Expected, err = publishAll(ctx, pub, cfg, stable, readers, cfg.Rate, received, 1)
	case "resume":
		err = runResume(ctx, pub, cfg, workers, received, &res)
	}
	res.PublishSeconds = time.Since(pubStart).Seconds()
	if err != nil {
		stopAll(workers)
		return res, err
	}
	// Wait until everything arrived, or nothing has for a while.
	last, lastChange := received(), time.Now()
	for res.Expected > 0 && last < res.Expected+int64(len(cfg.Fault.Duplicate)) && time.Since(lastChange) < cfg.Drain {
		time.Sleep(20 * time.Millisecond)
		if n := received(); n != last {
			last, lastChange = n, time.Now()
		}
	}
	deliverEnd := time.Now()
	res.DeliverSeconds = deliverEnd.Sub(pubStart).Seconds()
	stopGC()
	<-gcDone
	res.framesPerWrite(fw0, g.values(metricSocketWrites, metricFramesWritten))
	nodes1 := g.samples(cfg.Transport)
	res.RedisProcs = redisProcs(cfg.RedisPIDs, procs0, procsP, readProcs(cfg.RedisPIDs))
	if shards != nil {
		shards1, err := shards.snapshot(ctx)
		if err != nil {
			stopAll(workers)
			return res, err
		}
		res.RedisShards = diffShards(shards0, shards1)
	}
	rss1, cpu1 := sumSamples(nodes1)
	res.GatewayRSSAfter = rss1
	res.GatewayCPU = cpu1 - cpu0
	if len(cfg.Targets) > 1 {
		res.Nodes = nodeResults(cfg, nodes0, nodesP, nodes1)
	}
	res.SlowClosed = int64(g.metric("wspubsub_disconnects_total{reason=\"too_slow\"}") - slow0)
	if mem != nil {
		if err := mem.after(ctx, res.Redis); err != nil {
			stopAll(workers)
			return res, err
		}
	}

	buckets, arrival := map[int]int64{}, map[int]int64{}
	var slots, aslots []map[int64]map[int]int64
	for _, w := range workers {
		st := w.stop()
		slots = append(slots, st.Timeline)
		if len(st.ArrivalTimeline) > 0 {
			aslots = append(aslots, st.ArrivalTimeline)
		}
		res.Delivered += st.Received
		res.Duplicates += st.Duplicates
		res.OutOfOrder += st.OutOfOrder
		res.ServerClosed += st.ServerClosed
		res.Retried += st.Retried
		res.Positions += st.Positions
		res.Gaps += st.Gaps
		res.Unexpected += st.Unexpected
		res.ChurnConnects += st.ChurnConnects
		res.ChurnFailures += st.ChurnFailures
		for k, v := range st.Latency {
			buckets[k] += v
		}
		for k, v := range st.Arrival {
			arrival[k] += v
		}
	}
	res.Latency = summarize(buckets)
	if len(arrival) > 0 {
		a := summarize(arrival)
		res.Arrival = &a
	}
	if cfg.Scenario != "idle" {
		res.Timeline = mergeTimelines(slots, aslots, gcAt)
	}
	if res.Resume != nil {
		res.Resume.Gaps = res.Gaps
	}
	res.Lost = max(0, res.Expected-(res.Delivered-res.Duplicates))
	if d := deliverEnd.Sub(pubStart).Seconds(); d > 0 && res.Delivered > 0 {
		res.DeliveredPerSec = float64(res.Delivered) / d
	}
	if c := res.Ceiling; c != nil && c.OnePerWrite > 0 {
		ratio := res.DeliveredPerSec / c.OnePerWrite
		res.RatioToCeiling = &ratio
	}
	if cfg.Scenario == "idle" && res.Connected > 0 && rss0 > 0 {
		if rssWarm > 0 {
			res.WarmConns, res.GatewayRSSWarm = idleWarmConns, rssWarm
			res.BytesPerConnMarginal = float64(rss1-rssWarm) / float64(res.Connected)
		}
		res.BytesPerConn = float64(rss1-rss0) / float64(res.Connected+res.WarmConns)
	}
	res.ClientCPU = ownCPU() - calCPU
	res.WallSeconds = time.Since(start).Seconds()
	report(out, res)
	return res, nil
}

// idleWarmConns connections open before an idle run's own (of at least ten
// times as many) measure the gateway's one-time costs: the first
// connections grow its heap arenas, fault in code and size its buffers
// (≈ 6 MB on 2026-12-03's build), which an RSS growth divided by the run's
// connections would spread over every one of them.
const idleWarmConns = 500

// warmUp opens idleWarmConns idle connections (on the run's first keys)
// when an idle run is large enough and the gateway's RSS is known, waits
// for the gateway to settle and returns them and its RSS then (0 and nil
// otherwise). The caller stops them after the run.
func warmUp(ctx context.Context, cfg Config, g gateways, rss0 int64) ([]worker, int64, error) {
	if cfg.Scenario != "idle" || rss0 <= 0 || cfg.Conns < 10*idleWarmConns {
		return nil, 0, nil
	}
	wc := cfg
	wc.Conns = idleWarmConns
	warm, err := startWorkers(wc)
	if err != nil {
		return nil, 0, err
	}
	for _, w := range warm {
		if failed, err := w.ready(); err != nil || failed > 0 {
			stopAll(warm)
			return nil, 0, fmt.Errorf("warm-up connections: %d failed: %v", failed, err)
		}
	}
	select {
	case <-ctx.Done():
		stopAll(warm)
		return nil, 0, ctx.Err()
	case <-time.After(time.Second): // the handshakes' garbage collected or not, as in the run itself
	}
	rss, _ := sumSamples(g.samples(cfg.Transport))
	return warm, rss, nil
}

// churnShare is the share of connections that reconnect in a loop in the
// churn scenario; messages go to the others.
const churnShare = 0.2

func ownCPU() float64 {
	var self, children syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(self.Utime) + tv(self.Stime) + tv(children.Utime) + tv(children.Stime)
}
