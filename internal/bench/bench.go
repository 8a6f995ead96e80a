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
// It only ever contacts the given target, Redis and MongoDB; every loop is
// bounded in count and time. It must not import the gateway's packages: it
// measures the gateway from outside, as a user's deployment would be.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config describes one run.
type Config struct {
	Target                             string        // gateway base URL, http://127.0.0.1:8088
	Path                               string        // client path, /websocket
	Scenario                           string        // idle, personal, broadcast, rate, churn, resume
	Conns                              int           // connections
	Messages                           int           // messages to publish (personal, broadcast)
	Rate                               int           // messages per second (rate, churn)
	Duration                           time.Duration // run length (rate, churn, idle hold)
	Transport                          string        // websocket, eventsource, polling
	Batch                              int           // connections opened concurrently per process
	PerProc                            int           // connections per client process before spreading
	Sources                            []string      // local addresses, one per client process
	KeyPrefix                          string
	Keys                               string // provisioning: mongo, file, none
	MongoURI, MongoDB, MongoCollection string
	KeysFile                           string
	RedisURL                           string // publish through Redis; empty: POST /publish
	Channel                            string
	Token                              string        // bearer token for POST /publish and /metrics
	Drain                              time.Duration // wait for stragglers after the last publish
	Window                             int           // closed-loop publishing: most deliveries in flight (0: open loop)
	SlowShare                          float64       // share of connections that never read (the last ones)
	PayloadBytes                       int           // pad each message's data to about this size
	GatewayPID                         int           // read RSS/CPU from /proc (else from /metrics)
	// Durable publishes through the history: FCALL wspubsub_publish over
	// Redis (one pipeline per batch), or POST /publish checked for ids. It
	// also reads Redis's memory and the history's length before and after.
	Durable           bool
	NoIdempotencyKeys bool // durable publishes without an idempotency key
	// Resume makes the clients connect with since= (empty at first, then
	// the last id received) and parse {"id":…,"data":…} frames.
	Resume bool
	Behind int   // resume scenario: messages per key published while the clients are away
	Fault  Fault // for the tool's own tests
	// WorkerCommand builds a client process's command (default: this
	// executable with `bench --worker <json>`); tests substitute their own.
	WorkerCommand func(workerJSON string) *exec.Cmd
}

// Fault injects publishing errors so tests can check the counting.
type Fault struct {
	Skip      []int64 // sequence numbers never published (lost)
	Duplicate []int64 // published twice
	Swap      []int64 // seq and seq+1 published in reverse order
}

// Result is one run's outcome; it is printed as one JSON line.
type Result struct {
	Scenario         string        `json:"scenario"`
	Transport        string        `json:"transport"`
	Conns            int           `json:"conns"`
	Connected        int           `json:"connected"`
	ConnectFailures  int           `json:"connect_failures"`
	ConnectRate      float64       `json:"connects_per_s"`
	Procs            int           `json:"client_procs"`
	Published        int64         `json:"published"`
	PublishSeconds   float64       `json:"publish_s"`
	Expected         int64         `json:"expected"`
	Delivered        int64         `json:"delivered"`
	Lost             int64         `json:"lost"`
	Duplicates       int64         `json:"duplicated"`
	OutOfOrder       int64         `json:"out_of_order"`
	ServerClosed     int64         `json:"server_closed"`
	Durable          bool          `json:"durable,omitempty"`
	Resuming         bool          `json:"resuming_clients,omitempty"`
	Positions        int64         `json:"positions,omitempty"`         // {"id":…} frames: clients told where "now" is
	Gaps             int64         `json:"gaps,omitempty"`              // {"gap":true} frames
	Unexpected       int64         `json:"unexpected_frames,omitempty"` // frames that are none of these (e.g. heartbeats)
	DeliveredPerSec  float64       `json:"delivered_per_s"`
	Latency          Latency       `json:"latency"`
	ChurnConnects    int64         `json:"churn_connects,omitempty"`
	ChurnFailures    int64         `json:"churn_failures,omitempty"`
	SlowConns        int           `json:"slow_conns,omitempty"`
	SlowClosed       int64         `json:"slow_closed_4008,omitempty"`
	GatewayRSSBefore int64         `json:"gateway_rss_before"`
	GatewayRSSAfter  int64         `json:"gateway_rss_after"`
	BytesPerConn     float64       `json:"gateway_bytes_per_conn,omitempty"`
	GatewayCPU       float64       `json:"gateway_cpu_s"`
	ClientCPU        float64       `json:"client_cpu_s"`
	WallSeconds      float64       `json:"wall_s"`
	Resume           *ResumeResult `json:"resume,omitempty"`
	Redis            *RedisStats   `json:"redis,omitempty"`
}

// ResumeResult is the resume scenario's catch-up: every client went away
// after one message, BehindPerKey messages were published for each, then
// all reconnected with since=<the last id they received>.
type ResumeResult struct {
	Clients            int     `json:"clients"`
	BehindPerKey       int     `json:"behind_per_key"`
	AwayPublished      int64   `json:"away_published"`
	AwayPublishSeconds float64 `json:"away_publish_s"`
	Reconnected        int     `json:"reconnected"`
	ReconnectFailures  int     `json:"reconnect_failures"`
	CatchupExpected    int64   `json:"catchup_expected"`
	CatchupDelivered   int64   `json:"catchup_delivered"`
	CatchupSeconds     float64 `json:"catchup_s"` // reconnect start → every message received (or the last one that came)
	CatchupPerSec      float64 `json:"catchup_per_s"`
	Gaps               int64   `json:"gaps"`
}

// RedisStats is what the history costs in Redis (durable runs with a
// Redis URL): INFO memory's used_memory before and after the run, the
// history's entries (Σ XLEN wspubsub:h:{<key>} over the run's keys) and
// their streams' own size (Σ MEMORY USAGE), and Redis's CPU time over the
// run (INFO cpu: the durable path runs a function per message there).
type RedisStats struct {
	CPUSeconds    float64 `json:"cpu_s"`
	UsedBefore    int64   `json:"used_memory_before"`
	UsedAfter     int64   `json:"used_memory_after"`
	EntriesBefore int64   `json:"history_entries_before"`
	Entries       int64   `json:"history_entries"`
	StreamBytes   int64   `json:"history_stream_bytes"`
	// StreamBytesPerHeld is Σ MEMORY USAGE / entries: the streams alone,
	// key names and per-key overhead included.
	StreamBytesPerHeld float64 `json:"bytes_per_held_msg"`
	// UsedPerHeld is Δused_memory / Δentries: everything the run added to
	// Redis per message it left held, idempotency keys included (one per
	// durable publish, kept for --history-ttl) — when entries grew.
	UsedPerHeld     float64 `json:"used_memory_per_held_msg,omitempty"`
	IdempotencyKeys bool    `json:"idempotency_keys"`
}

func (c *Config) defaults() error {
	if c.Path == "" {
		c.Path = "/websocket"
	}
	if c.Transport == "" {
		c.Transport = "websocket"
	}
	if c.PerProc <= 0 {
		c.PerProc = 15000
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = "bench-"
	}
	if c.Channel == "" {
		c.Channel = "my_channel"
	}
	if c.Drain <= 0 {
		c.Drain = 5 * time.Second
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.Conns <= 0 {
		return errors.New("--conns must be positive")
	}
	if c.Window < 0 {
		c.Window = 50000
		if c.Scenario == "broadcast" {
			c.Window = 50 * c.Conns // ~50 messages in flight per connection
		}
	}
	if c.SlowShare < 0 || c.SlowShare >= 1 {
		return errors.New("--slow-share must be in [0, 1)")
	}
	switch c.Scenario {
	case "idle", "personal", "broadcast", "rate", "churn":
	case "resume":
		c.Durable, c.Resume = true, true
		if c.Behind <= 0 {
			c.Behind = 100
		}
		if c.SlowShare > 0 {
			return errors.New("--slow-share does not apply to the resume scenario")
		}
		c.Messages = c.Conns * (1 + c.Behind)
	default:
		return fmt.Errorf("unknown scenario %q (idle, personal, broadcast, rate, churn, resume)", c.Scenario)
	}
	if c.Resume && c.Scenario == "churn" {
		return errors.New("--resume does not apply to the churn scenario")
	}
	if (c.Scenario == "rate" || c.Scenario == "churn") && c.Rate <= 0 {
		return errors.New("--rate must be positive for rate and churn")
	}
	if c.Scenario == "rate" || c.Scenario == "churn" {
		c.Messages = int(float64(c.Rate) * c.Duration.Seconds())
	}
	if c.Messages > 50_000_000 {
		return errors.New("--messages is capped at 50,000,000")
	}
	u, err := url.Parse(c.Target)
	if err != nil || u.Host == "" {
		return fmt.Errorf("bad --target %q", c.Target)
	}
	return nil
}

// wsURL is the client URL without the query.
func (c *Config) wsURL() string {
	u, _ := url.Parse(c.Target)
	scheme := "ws"
	if u.Scheme == "https" {
		scheme = "wss"
	}
	return scheme + "://" + u.Host + c.Path
}

// Run performs one run and writes the human summary and the JSON line.
func Run(ctx context.Context, cfg Config, out io.Writer) (Result, error) {
	if err := cfg.defaults(); err != nil {
		return Result{}, err
	}
	start := time.Now()
	res := Result{Scenario: cfg.Scenario, Transport: cfg.Transport, Conns: cfg.Conns, Durable: cfg.Durable, Resuming: cfg.Resume}
	g := newGatewayProbe(cfg)
	rss0, cpu0 := g.read()
	res.GatewayRSSBefore = rss0

	if err := provision(ctx, cfg); err != nil {
		return res, err
	}
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
	rss1, cpu1 := g.read()
	res.GatewayRSSAfter = rss1
	res.GatewayCPU = cpu1 - cpu0
	res.SlowClosed = int64(g.metric("wspubsub_disconnects_total{reason=\"too_slow\"}") - slow0)
	if mem != nil {
		if err := mem.after(ctx, res.Redis); err != nil {
			stopAll(workers)
			return res, err
		}
	}

	buckets := map[int]int64{}
	for _, w := range workers {
		st := w.stop()
		res.Delivered += st.Received
		res.Duplicates += st.Duplicates
		res.OutOfOrder += st.OutOfOrder
		res.ServerClosed += st.ServerClosed
		res.Positions += st.Positions
		res.Gaps += st.Gaps
		res.Unexpected += st.Unexpected
		res.ChurnConnects += st.ChurnConnects
		res.ChurnFailures += st.ChurnFailures
		for k, v := range st.Latency {
			buckets[k] += v
		}
	}
	res.Latency = summarize(buckets)
	if res.Resume != nil {
		res.Resume.Gaps = res.Gaps
	}
	res.Lost = max(0, res.Expected-(res.Delivered-res.Duplicates))
	if d := deliverEnd.Sub(pubStart).Seconds(); d > 0 && res.Delivered > 0 {
		res.DeliveredPerSec = float64(res.Delivered) / d
	}
	if cfg.Scenario == "idle" && res.Connected > 0 && rss0 > 0 {
		res.BytesPerConn = float64(rss1-rss0) / float64(res.Connected)
	}
	res.ClientCPU = ownCPU()
	res.WallSeconds = time.Since(start).Seconds()
	report(out, res)
	return res, nil
}

// churnShare is the share of connections that reconnect in a loop in the
// churn scenario; messages go to the others.
const churnShare = 0.2

func report(out io.Writer, r Result) {
	fmt.Fprintf(out, "scenario %s over %s: %d/%d connected (%d failed) at %.0f/s from %d process(es)\n",
		r.Scenario, r.Transport, r.Connected, r.Conns, r.ConnectFailures, r.ConnectRate, r.Procs)
	if r.Published > 0 {
		fmt.Fprintf(out, "published %d in %.2fs; delivered %d of %d expected (%.0f/s): lost %d, duplicated %d, out of order %d, closed by server %d\n",
			r.Published, r.PublishSeconds, r.Delivered, r.Expected, r.DeliveredPerSec, r.Lost, r.Duplicates, r.OutOfOrder, r.ServerClosed)
		fmt.Fprintf(out, "latency ms: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f  (%d samples)\n",
			r.Latency.P50, r.Latency.P90, r.Latency.P99, r.Latency.P999, r.Latency.Max, r.Latency.Samples)
	}
	if rr := r.Resume; rr != nil {
		fmt.Fprintf(out, "resume: %d clients away while %d messages (%d per key) were published in %.2fs; %d reconnected (%d failed), caught up %d of %d in %.2fs (%.0f/s), %d gaps\n",
			rr.Clients, rr.AwayPublished, rr.BehindPerKey, rr.AwayPublishSeconds, rr.Reconnected, rr.ReconnectFailures,
			rr.CatchupDelivered, rr.CatchupExpected, rr.CatchupSeconds, rr.CatchupPerSec, rr.Gaps)
	}
	if m := r.Redis; m != nil {
		fmt.Fprintf(out, "redis: CPU %.2fs; used_memory %.1f MB → %.1f MB; history %d → %d entries, streams %.1f MB (%.0f bytes per held message)",
			m.CPUSeconds, float64(m.UsedBefore)/1e6, float64(m.UsedAfter)/1e6, m.EntriesBefore, m.Entries, float64(m.StreamBytes)/1e6, m.StreamBytesPerHeld)
		if m.UsedPerHeld > 0 {
			fmt.Fprintf(out, "; used_memory grew %.0f bytes per new entry", m.UsedPerHeld)
		}
		fmt.Fprintln(out)
	}
	if r.ChurnConnects > 0 {
		fmt.Fprintf(out, "churn: %d reconnects, %d failed\n", r.ChurnConnects, r.ChurnFailures)
	}
	fmt.Fprintf(out, "gateway RSS %.1f MB → %.1f MB", float64(r.GatewayRSSBefore)/1e6, float64(r.GatewayRSSAfter)/1e6)
	if r.BytesPerConn > 0 {
		fmt.Fprintf(out, " (%.0f bytes per connection)", r.BytesPerConn)
	}
	fmt.Fprintf(out, "; CPU gateway %.2fs, load tool %.2fs, wall %.1fs\n", r.GatewayCPU, r.ClientCPU, r.WallSeconds)
	b, _ := json.Marshal(r)
	fmt.Fprintf(out, "%s\n", b)
}

// publishAll publishes cfg.Messages messages (it returns how many distinct
// sequence numbers it meant to publish, faults included) to random stable keys (or as
// broadcasts), at rate per second when rate > 0, in pipelined batches.
//
// Without a rate it is closed-loop: it keeps at most cfg.Window messages
// (deliveries, for broadcasts) in flight, so it measures what the gateway
// sustains instead of overflowing Redis's buffer for a slow subscriber
// (Redis then drops the subscriber and the messages).
func publishAll(ctx context.Context, pub publisher, cfg Config, stable, readers, rate int, received func() int64, perMsg int64) (intended, toReaders int64, err error) {
	skip := map[int64]bool{}
	for _, s := range cfg.Fault.Skip {
		skip[s] = true
	}
	dup := map[int64]bool{}
	for _, s := range cfg.Fault.Duplicate {
		dup[s] = true
	}
	swap := map[int64]bool{}
	for _, s := range cfg.Fault.Swap {
		swap[s] = true
	}
	batchSize := 256
	if rate == 0 && cfg.Window > 0 {
		batchSize = int(max(1, min(256, int64(cfg.Window)/(2*perMsg))))
	}
	var tick time.Duration
	if rate > 0 {
		// Publish every millisecond (or less often at low rates).
		tick = time.Millisecond
		batchSize = max(1, rate/1000)
		if rate < 1000 {
			tick = time.Second / time.Duration(rate)
			batchSize = 1
		}
	}
	broadcast := cfg.Scenario == "broadcast"
	pad := padding(cfg)
	batch := make([][]byte, 0, batchSize+4)
	next := time.Now()
	msg := func(seq int64) []byte {
		now := time.Now().UnixNano()
		if broadcast {
			return fmt.Appendf(nil, `{"broadcast":true,"data":{"s":%d,"t":%d,"p":"%s"}}`, seq, now, pad)
		}
		k := rand.IntN(stable)
		if k < readers {
			toReaders++
		}
		return fmt.Appendf(nil, `{"recipients":["%s%d"],"data":{"s":%d,"t":%d,"p":"%s"}}`, cfg.KeyPrefix, k, seq, now, pad)
	}
	deadline := time.Now().Add(cfg.Duration + time.Minute)
	for seq := int64(0); seq < int64(cfg.Messages); {
		batch = batch[:0]
		for len(batch) < batchSize && seq < int64(cfg.Messages) {
			intended++
			switch {
			case skip[seq]:
				toReaders++ // meant to be delivered: the injected loss
			case swap[seq] && seq+1 < int64(cfg.Messages):
				batch = append(batch, msg(seq+1), msg(seq))
				seq++
				intended++
			case dup[seq]:
				m := msg(seq)
				batch = append(batch, m, m)
			default:
				batch = append(batch, msg(seq))
			}
			seq++
		}
		if rate == 0 && cfg.Window > 0 {
			// Wait until this batch fits in the window (always let one through).
			room := int64(cfg.Window) - int64(len(batch))*perMsg
			for {
				inflight := (intended-int64(len(batch))-int64(len(cfg.Fault.Skip)))*perMsg - received()
				if inflight <= 0 || inflight <= room || time.Now().After(deadline) {
					break
				}
				time.Sleep(100 * time.Microsecond)
			}
		}
		if err := pub.publish(ctx, batch); err != nil {
			return intended, toReaders, err
		}
		if tick > 0 {
			next = next.Add(tick)
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			break
		}
	}
	return intended, toReaders, nil
}

func padding(cfg Config) string {
	if cfg.PayloadBytes > 40 {
		return strings.Repeat("x", cfg.PayloadBytes-40)
	}
	return ""
}

// runResume is the resume scenario: every client receives one message (so
// that it holds the id of a message it got), goes away, Behind messages
// per key are published durably meanwhile, then every client reconnects
// with since=<its last id> and is caught up from the history.
func runResume(ctx context.Context, pub publisher, cfg Config, workers []worker, received func() int64, res *Result) error {
	n := int64(cfg.Conns)
	rr := &ResumeResult{Clients: cfg.Conns, BehindPerKey: cfg.Behind}
	res.Resume = rr
	if err := publishPerKey(ctx, pub, cfg, 0, 1); err != nil {
		return err
	}
	res.Published = n
	waitReceived(received, n, cfg.Drain)

	if err := eachWorker(workers, func(w worker) error { return w.disconnect() }); err != nil {
		return err
	}
	away := time.Now()
	if err := publishPerKey(ctx, pub, cfg, n, cfg.Behind); err != nil {
		return err
	}
	rr.AwayPublished = n * int64(cfg.Behind)
	rr.AwayPublishSeconds = time.Since(away).Seconds()
	res.Published += rr.AwayPublished
	res.Expected = res.Published
	rr.CatchupExpected = rr.AwayPublished

	before := received()
	back := time.Now()
	var failures int
	var mu sync.Mutex
	err := eachWorker(workers, func(w worker) error {
		f, err := w.reconnect()
		mu.Lock()
		failures += f
		mu.Unlock()
		return err
	})
	if err != nil {
		return err
	}
	rr.ReconnectFailures, rr.Reconnected = failures, cfg.Conns-failures
	end := waitReceived(received, res.Expected, cfg.Drain)
	rr.CatchupDelivered = received() - before
	rr.CatchupSeconds = end.Sub(back).Seconds()
	if rr.CatchupSeconds > 0 {
		rr.CatchupPerSec = float64(rr.CatchupDelivered) / rr.CatchupSeconds
	}
	return nil
}

// eachWorker runs f on every worker at once and returns the first error.
func eachWorker(workers []worker, f func(worker) error) error {
	errs := make(chan error, len(workers))
	for _, w := range workers {
		go func() { errs <- f(w) }()
	}
	var first error
	for range workers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// waitReceived waits until want deliveries arrived, or none has for
// drain; it returns when the last one came.
func waitReceived(received func() int64, want int64, drain time.Duration) time.Time {
	last, lastChange := received(), time.Now()
	for last < want && time.Since(lastChange) < drain {
		time.Sleep(2 * time.Millisecond)
		if n := received(); n != last {
			last, lastChange = n, time.Now()
		}
	}
	return lastChange
}

// publishPerKey publishes perKey messages to each key in turn (key i gets
// sequence numbers seq0+i, seq0+n+i, …: each key's in order), in pipelined
// batches; nobody is reading meanwhile, so without a window.
func publishPerKey(ctx context.Context, pub publisher, cfg Config, seq0 int64, perKey int) error {
	pad := padding(cfg)
	batch := make([][]byte, 0, 256)
	seq := seq0
	for range perKey {
		for i := range cfg.Conns {
			batch = append(batch, fmt.Appendf(nil, `{"recipients":["%s%d"],"data":{"s":%d,"t":%d,"p":"%s"}}`,
				cfg.KeyPrefix, i, seq, time.Now().UnixNano(), pad))
			seq++
			if len(batch) == cap(batch) {
				if err := pub.publish(ctx, batch); err != nil {
					return err
				}
				batch = batch[:0]
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if len(batch) > 0 {
		return pub.publish(ctx, batch)
	}
	return nil
}

func ownCPU() float64 {
	var self, children syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(self.Utime) + tv(self.Stime) + tv(children.Utime) + tv(children.Stime)
}

// sourcesFor returns n local addresses: the given ones, else 127.0.0.1,
// 127.0.0.2, … (each gives one client process its own ephemeral ports).
func sourcesFor(cfg Config, n int) []string {
	out := make([]string, n)
	for i := range out {
		if i < len(cfg.Sources) {
			out[i] = cfg.Sources[i]
		} else if strings.HasPrefix(hostOf(cfg.Target), "127.") || hostOf(cfg.Target) == "localhost" {
			out[i] = fmt.Sprintf("127.0.0.%d", i+1)
		}
	}
	return out
}

func hostOf(target string) string {
	u, err := url.Parse(target)
	if err != nil {
		return ""
	}
	return u.Hostname()
}
