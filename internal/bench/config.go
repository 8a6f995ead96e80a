package bench

// A run's configuration: the flags' values, their defaults and checks, and
// where the client processes connect from.

import (
	"errors"
	"fmt"
	"net/url"
	"os/exec"
	"strings"
	"time"
)

// Config describes one run.
type Config struct {
	Target string // gateway base URL, http://127.0.0.1:8088; or several, comma-separated (see Targets)
	// Targets are the gateways (default: Target split at commas); with
	// several, connection i goes to Targets[i mod n], so each holds ~1/n,
	// and the result gives each node's figures. POST /publish and the
	// URL's host for the default source addresses use the first.
	Targets                            []string
	Path                               string        // client path, /websocket
	Scenario                           string        // idle, personal, broadcast, rate, churn, resume, ceiling
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
	BroadcastList                      bool          // broadcast: name every key in "recipients" instead of "broadcast":true
	PayloadBytes                       int           // pad each message's data to about this size
	GatewayPID                         int           // read RSS/CPU from /proc (else from /metrics)
	GatewayPIDs                        []int         // one per target (default: GatewayPID)
	RedisPIDs                          []int         // Redis servers whose CPU (from /proc) the result gives
	// RedisCluster makes RedisURL a comma-separated list of Redis Cluster
	// seeds. Routing is how the tool publishes over Redis: "all" (PUBLISH
	// on Channel, FCALL wspubsub_publish 0) or "keys" (as a routed backend:
	// SPUBLISH on each key's channel or on the broadcast channel, FCALL per
	// hash slot with the history keys); default "keys" with RedisCluster,
	// as the gateway's --routing.
	RedisCluster bool
	Routing      string
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

	// Calibrate measures this machine's ceiling (ceiling.go) before the
	// scenario, and reports the run's rate as a ratio to it.
	Calibrate     bool
	CeilingConns  int           // the calibration's connections (default: Conns)
	CeilingPhase  time.Duration // each calibration phase's sending time [2s]
	CeilingInProc int           // most calibration connections with both ends in this process [9000]
}

// Fault injects publishing errors so tests can check the counting.
type Fault struct {
	Skip      []int64 // sequence numbers never published (lost)
	Duplicate []int64 // published twice
	Swap      []int64 // seq and seq+1 published in reverse order
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
	if c.CeilingConns <= 0 {
		c.CeilingConns = c.Conns
	}
	if c.CeilingPhase <= 0 {
		c.CeilingPhase = 2 * time.Second
	}
	if c.CeilingPhase > 30*time.Second {
		return errors.New("--calibrate-phase is capped at 30s")
	}
	if c.CeilingInProc <= 0 {
		c.CeilingInProc = 9000
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
	case "ceiling":
		return nil // no gateway: nothing else applies
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
		return fmt.Errorf("unknown scenario %q (idle, personal, broadcast, rate, churn, resume, ceiling)", c.Scenario)
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
	if len(c.Targets) == 0 {
		c.Targets = SplitList(c.Target)
	}
	if len(c.Targets) == 0 {
		return errors.New("--target is empty")
	}
	for _, t := range c.Targets {
		if u, err := url.Parse(t); err != nil || u.Host == "" {
			return fmt.Errorf("bad --target %q", t)
		}
	}
	c.Target = c.Targets[0]
	if len(c.GatewayPIDs) == 0 && c.GatewayPID > 0 {
		c.GatewayPIDs = []int{c.GatewayPID}
	}
	if len(c.GatewayPIDs) > 0 && len(c.GatewayPIDs) != len(c.Targets) {
		return fmt.Errorf("--gateway-pid: %d process ids for %d targets (one per target, in the same order)", len(c.GatewayPIDs), len(c.Targets))
	}
	switch c.Routing {
	case "":
		c.Routing = "all"
		if c.RedisCluster {
			c.Routing = "keys"
		}
	case "all", "keys":
	default:
		return fmt.Errorf("unknown --routing %q (all, keys)", c.Routing)
	}
	if c.RedisCluster && c.RedisURL == "" {
		return errors.New("--redis-cluster needs --redis-url (the cluster's seeds)")
	}
	return nil
}

// wsURLs are the client URLs without the query, one per target.
func (c *Config) wsURLs() []string {
	out := make([]string, len(c.Targets))
	for i, t := range c.Targets {
		u, _ := url.Parse(t)
		scheme := "ws"
		if u.Scheme == "https" {
			scheme = "wss"
		}
		out[i] = scheme + "://" + u.Host + c.Path
	}
	return out
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
