package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wspubsub/wspubsub/internal/bench"
	"github.com/wspubsub/wspubsub/internal/config"
)

// benchCmd runs the load tool: `wspubsub bench --scenario personal …`.
func benchCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 2 && args[0] == "--worker" { // a client process this command started (internal/bench)
		return bench.RunWorker(args[1], os.Stdin, os.Stdout)
	}
	fs := config.NewFlagSet("wspubsub bench", stdout) // --help
	var c bench.Config
	var sources, gatewayPIDs, redisPIDs string
	idem := true
	fs.String(&c.Target, "target", "http://127.0.0.1:8088", "gateway base URL (the only host contacted besides Redis and MongoDB); several, comma-separated: connection i goes to target i mod n, and the result gives each node's figures (nodes)")
	fs.String(&c.Path, "path", "/websocket", "client path")
	fs.String(&c.Scenario, "scenario", "idle", "idle, personal, broadcast, rate, churn, resume (clients away while --behind messages per key are published durably, then caught up from the history) or ceiling (this machine's: no gateway, see --calibrate)")
	fs.Int(&c.Conns, "conns", 1000, "client connections")
	fs.Int(&c.Messages, "messages", 10000, "messages to publish (personal, broadcast; rate and churn: rate × duration)")
	fs.Int(&c.Rate, "rate", 0, "messages per second (rate, churn)")
	fs.Duration(&c.Duration, "duration", 10*time.Second, "length of rate and churn runs")
	fs.String(&c.Transport, "transport", "websocket", "websocket, eventsource or polling")
	fs.Int(&c.Batch, "batch", 200, "connections opened concurrently per client process")
	fs.Int(&c.PerProc, "per-proc", 15000, "connections per client process; more spread over processes (open-file limit)")
	fs.String(&sources, "sources", "", "local addresses for the client processes, comma-separated (default 127.0.0.1, 127.0.0.2, … for a loopback target)")
	fs.String(&c.KeyPrefix, "key-prefix", "bench-", "keys are <prefix>0 … <prefix>N-1")
	fs.String(&c.Keys, "keys", "none", "provision keys first: mongo, file or none")
	fs.String(&c.MongoURI, "mongo-uri", "mongodb://127.0.0.1:27017", "MongoDB for --keys mongo")
	fs.String(&c.MongoDB, "mongo-db", "myDB", "database for --keys mongo")
	fs.String(&c.MongoCollection, "mongo-collection", "myCollection", "collection for --keys mongo")
	fs.String(&c.KeysFile, "keys-file", "", "file for --keys file (the gateway's --keys-file)")
	fs.String(&c.RedisURL, "redis-url", "", "publish through this Redis (empty: POST /publish); with --redis-cluster, the cluster's seeds, comma-separated")
	fs.Bool(&c.RedisCluster, "redis-cluster", false, "--redis-url is a comma-separated list of Redis Cluster seeds (implies --routing keys)")
	fs.String(&c.Routing, "routing", "", `how to publish over Redis: "all" (PUBLISH on --channel; FCALL wspubsub_publish 0) or "keys" (as a routed backend: SPUBLISH on each key's channel, broadcasts on the broadcast channel, durable FCALL per hash slot with the history keys); default "keys" with --redis-cluster, else "all"`)
	fs.String(&c.Channel, "channel", "my_channel", "the gateway's inbound channel")
	fs.String(&c.Token, "publish-token", "", "bearer token for POST /publish and /metrics")
	fs.Int(&c.Window, "window", -1, "personal and broadcast: most deliveries in flight (-1: 50,000, or 50 per connection for broadcast; 0: open loop, as fast as Redis takes them)")
	fs.Bool(&c.BroadcastList, "broadcast-list", false, `broadcast scenario: address every key in one "recipients" list instead of {"broadcast":true}`)
	fs.Float(&c.SlowShare, "slow-share", 0, "share of connections that never read (they should be closed with 4008; the rest must not suffer)")
	fs.Int(&c.PayloadBytes, "payload-bytes", 0, "pad each message to about this many bytes")
	fs.Duration(&c.Drain, "drain", 5*time.Second, "stop waiting for deliveries after this long without progress")
	fs.String(&gatewayPIDs, "gateway-pid", "", "read the gateway's RSS and CPU from /proc (default: its /metrics); with several targets, one pid per target, comma-separated, in the same order")
	fs.String(&redisPIDs, "redis-pids", "", "Redis server pids, comma-separated: report each one's CPU seconds and RSS over the run (from /proc)")
	fs.Bool(&c.Durable, "durable", false, "publish through the history: FCALL wspubsub_publish with --redis-url (one pipeline per batch), else POST /publish checked for ids; clients resume (see --resume); reports Redis memory per held message with --redis-url")
	fs.Bool(&idem, "idempotency-keys", true, "with --durable, give every publish a (unique) idempotency key, as a retrying publisher would")
	fs.Bool(&c.Resume, "resume", false, "clients connect with since= and follow the ids of the frames they get (default: on with --durable)")
	fs.Int(&c.Behind, "behind", 100, "resume scenario: messages published per key while the clients are away")
	fs.Bool(&c.Calibrate, "calibrate", false, "first measure this machine's ceiling (60-byte frames from one sender goroutine to --calibrate-conns loopback connections read by this tool's reader, one and 16 frames per write) and report delivered_per_s as ratio_to_ceiling")
	fs.Int(&c.CeilingConns, "calibrate-conns", 0, "connections of the calibration (default: --conns; readers in this process up to 9,000, else in client processes of --per-proc)")
	fs.Duration(&c.CeilingPhase, "calibrate-phase", 2*time.Second, "sending time of each calibration phase (at most 30s)")
	if err := fs.Parse(args, os.Getenv); err != nil {
		return err
	}
	if len(fs.Args()) > 0 {
		return &config.UsageError{Err: fmt.Errorf("unexpected arguments: %s (bench takes only flags)", strings.Join(fs.Args(), " "))}
	}
	if c.Durable && !fs.IsSet("resume") {
		c.Resume = true
	}
	c.NoIdempotencyKeys = !idem
	var err error
	if c.GatewayPIDs, err = bench.ParsePIDs(gatewayPIDs); err != nil {
		return &config.UsageError{Err: fmt.Errorf("--gateway-pid: %w", err)}
	}
	if c.RedisPIDs, err = bench.ParsePIDs(redisPIDs); err != nil {
		return &config.UsageError{Err: fmt.Errorf("--redis-pids: %w", err)}
	}
	if sources != "" {
		c.Sources = strings.Split(sources, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := bench.Run(ctx, c, stdout); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}
