package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
)

// Result is one run's outcome; it is printed as one JSON line.
type Result struct {
	Scenario        string  `json:"scenario"`
	Transport       string  `json:"transport"`
	Conns           int     `json:"conns"`
	Connected       int     `json:"connected"`
	ConnectFailures int     `json:"connect_failures"`
	ConnectRate     float64 `json:"connects_per_s"`
	Procs           int     `json:"client_procs"`
	Published       int64   `json:"published"`
	PublishSeconds  float64 `json:"publish_s"`
	// DeliverSeconds runs from the first publish to the last delivery (or
	// to the end of the wait for stragglers): the window of the *_publish_s
	// CPU figures and of delivered_per_s.
	DeliverSeconds float64 `json:"deliver_s"`
	Expected       int64   `json:"expected"`
	Delivered      int64   `json:"delivered"`
	Lost           int64   `json:"lost"`
	Duplicates     int64   `json:"duplicated"`
	OutOfOrder     int64   `json:"out_of_order"`
	ServerClosed   int64   `json:"server_closed"`
	// Retried is the reconnects after the server closed a WebSocket with
	// 1013 (try again: not admitted for now), each resuming from its last
	// id when resuming — what a client library does.
	Retried         int64   `json:"reconnects_after_1013,omitempty"`
	Durable         bool    `json:"durable,omitempty"`
	Resuming        bool    `json:"resuming_clients,omitempty"`
	Positions       int64   `json:"positions,omitempty"`         // {"id":…} frames: clients told where "now" is
	Gaps            int64   `json:"gaps,omitempty"`              // {"gap":true} frames
	Unexpected      int64   `json:"unexpected_frames,omitempty"` // frames that are none of these (e.g. heartbeats)
	DeliveredPerSec float64 `json:"delivered_per_s"`
	Latency         Latency `json:"latency"`
	// Arrival is the latency to the kernel's receive stamp on the client
	// socket (WebSocket): Latency without the time a frame waited there
	// for the load tool's reader to be scheduled.
	Arrival *Latency `json:"arrival_latency,omitempty"`
	// Timeline is the latency over time, per 250 ms of send time, with
	// the gateway's GC cycles in each slot.
	Timeline         []TimelinePoint `json:"timeline,omitempty"`
	ChurnConnects    int64           `json:"churn_connects,omitempty"`
	ChurnFailures    int64           `json:"churn_failures,omitempty"`
	SlowConns        int             `json:"slow_conns,omitempty"`
	SlowClosed       int64           `json:"slow_closed_4008,omitempty"`
	GatewayRSSBefore int64           `json:"gateway_rss_before"`
	GatewayRSSAfter  int64           `json:"gateway_rss_after"`
	BytesPerConn     float64         `json:"gateway_bytes_per_conn,omitempty"`
	// Idle runs of at least 10 × idleWarmConns open WarmConns first and
	// read the RSS then (GatewayRSSWarm): BytesPerConnMarginal is the
	// growth from there over the run's own connections, without the
	// gateway's one-time costs that BytesPerConn spreads over all of them.
	WarmConns            int           `json:"warm_conns,omitempty"`
	GatewayRSSWarm       int64         `json:"gateway_rss_warm,omitempty"`
	BytesPerConnMarginal float64       `json:"gateway_bytes_per_conn_marginal,omitempty"`
	GatewayCPU           float64       `json:"gateway_cpu_s"`
	ClientCPU            float64       `json:"client_cpu_s"`
	WallSeconds          float64       `json:"wall_s"`
	Resume               *ResumeResult `json:"resume,omitempty"`
	Redis                *RedisStats   `json:"redis,omitempty"`
	// The gateway's socket writes and the frames they carried over the
	// run (Δ wspubsub_socket_writes_total, Δ wspubsub_frames_written_total
	// from its /metrics), and their ratio.
	SocketWrites   int64   `json:"gateway_socket_writes,omitempty"`
	FramesWritten  int64   `json:"gateway_frames_written,omitempty"`
	FramesPerWrite float64 `json:"frames_per_write,omitempty"`
	// Ceiling is this machine's, measured in the same run (--calibrate,
	// --scenario ceiling); RatioToCeiling is delivered_per_s over its
	// one_per_write_per_s (with --calibrate).
	Ceiling        *Ceiling `json:"ceiling,omitempty"`
	RatioToCeiling *float64 `json:"ratio_to_ceiling,omitempty"`
	// Nodes are each gateway's figures when there are several targets
	// (the gateway_* figures above are then their sums).
	Nodes []NodeResult `json:"nodes,omitempty"`
	// RedisProcs are the Redis servers of --redis-pids (from /proc);
	// RedisShards each Redis server (a cluster's masters) over the publish
	// phase, from INFO (with --redis-url).
	RedisProcs  []RedisProc  `json:"redis_procs,omitempty"`
	RedisShards []RedisShard `json:"redis_shards,omitempty"`
}

// framesPerWrite sets the gateway's socket writes and frames over the run
// from the counters before and after (absent counters: nothing).
func (r *Result) framesPerWrite(before, after []float64) {
	writes, frames := int64(after[0]-before[0]), int64(after[1]-before[1])
	if writes <= 0 || frames < 0 {
		return
	}
	r.SocketWrites, r.FramesWritten = writes, frames
	r.FramesPerWrite = float64(frames) / float64(writes)
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

func report(out io.Writer, r Result) {
	if r.Scenario == "ceiling" {
		fmt.Fprintf(out, "%s; CPU load tool %.2fs\n", r.Ceiling.summary(), r.ClientCPU)
		b, _ := json.Marshal(r)
		fmt.Fprintf(out, "%s\n", b)
		return
	}
	fmt.Fprintf(out, "scenario %s over %s: %d/%d connected (%d failed) at %.0f/s from %d process(es)\n",
		r.Scenario, r.Transport, r.Connected, r.Conns, r.ConnectFailures, r.ConnectRate, r.Procs)
	if r.Published > 0 {
		fmt.Fprintf(out, "published %d in %.2fs; delivered %d of %d expected (%.0f/s): lost %d, duplicated %d, out of order %d, closed by server %d\n",
			r.Published, r.PublishSeconds, r.Delivered, r.Expected, r.DeliveredPerSec, r.Lost, r.Duplicates, r.OutOfOrder, r.ServerClosed)
		if r.Retried > 0 {
			fmt.Fprintf(out, "reconnects after a 1013 close (try again): %d\n", r.Retried)
		}
		fmt.Fprintf(out, "latency ms: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f  (%d samples)\n",
			r.Latency.P50, r.Latency.P90, r.Latency.P99, r.Latency.P999, r.Latency.Max, r.Latency.Samples)
		if a := r.Arrival; a != nil {
			fmt.Fprintf(out, "arrival ms (kernel receive stamp on the client socket): p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n",
				a.P50, a.P90, a.P99, a.P999, a.Max)
		}
		reportTimeline(out, r.Timeline)
	}
	if r.SocketWrites > 0 {
		fmt.Fprintf(out, "gateway socket writes: %d carrying %d frames (%.2f frames per write)\n", r.SocketWrites, r.FramesWritten, r.FramesPerWrite)
	}
	if r.Ceiling != nil {
		fmt.Fprintln(out, r.Ceiling.summary())
	}
	if r.RatioToCeiling != nil && r.DeliveredPerSec > 0 {
		fmt.Fprintf(out, "ratio to ceiling: %.2f (delivered %.0f/s ÷ %.0f/s at one frame per write)\n", *r.RatioToCeiling, r.DeliveredPerSec, r.Ceiling.OnePerWrite)
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
	for _, n := range r.Nodes {
		fmt.Fprintf(out, "node %s: %d connections, RSS %.1f → %.1f MB", n.Target, n.Connections, float64(n.RSSBefore)/1e6, float64(n.RSSAfter)/1e6)
		if n.BytesPerConn > 0 {
			fmt.Fprintf(out, " (%.0f bytes per connection)", n.BytesPerConn)
		}
		fmt.Fprintf(out, ", CPU %.2fs (%.2fs publishing), %d messages in, %d deliveries", n.CPU, n.CPUPublish, n.MessagesIn, n.Deliveries)
		if n.CPUPerDelivery > 0 {
			fmt.Fprintf(out, " (%.2f µs CPU each)", n.CPUPerDelivery)
		}
		if len(n.Events) > 0 {
			names := make([]string, 0, len(n.Events))
			for k := range n.Events {
				names = append(names, k)
			}
			sort.Strings(names)
			for _, k := range names {
				fmt.Fprintf(out, "; %s %d", k, n.Events[k])
			}
		}
		fmt.Fprintln(out)
	}
	for _, p := range r.RedisProcs {
		fmt.Fprintf(out, "redis pid %d: CPU %.2fs (%.2fs publishing), RSS %.1f → %.1f MB\n", p.PID, p.CPU, p.CPUPublish, float64(p.RSSBefore)/1e6, float64(p.RSSAfter)/1e6)
	}
	for _, s := range r.RedisShards {
		fmt.Fprintf(out, "redis %s (pid %d) while publishing: CPU %.2fs, %d commands, %.1f MB in, %.1f MB out, %d sharded channels, %d clients\n",
			s.Addr, s.PID, s.CPU, s.Commands, float64(s.NetIn)/1e6, float64(s.NetOut)/1e6, s.ShardChannels, s.Clients)
	}
	fmt.Fprintf(out, "gateway RSS %.1f MB → %.1f MB", float64(r.GatewayRSSBefore)/1e6, float64(r.GatewayRSSAfter)/1e6)
	if r.BytesPerConn > 0 {
		fmt.Fprintf(out, " (%.0f bytes per connection", r.BytesPerConn)
		if r.BytesPerConnMarginal > 0 {
			fmt.Fprintf(out, "; %.0f each beyond the first %d, at %.1f MB", r.BytesPerConnMarginal, r.WarmConns, float64(r.GatewayRSSWarm)/1e6)
		}
		fmt.Fprint(out, ")")
	}
	fmt.Fprintf(out, "; CPU gateway %.2fs, load tool %.2fs, wall %.1fs\n", r.GatewayCPU, r.ClientCPU, r.WallSeconds)
	b, _ := json.Marshal(r)
	fmt.Fprintf(out, "%s\n", b)
}
