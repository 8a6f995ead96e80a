// Package config turns command-line flags, their WSPUBSUB_* environment
// twins and serve's --config TOML file into validated settings for the
// sub-commands, and says where each came from (`wspubsub config`). It owns
// the defaults (the original app's constants) and the wording of usage
// errors; it must not start anything.
package config

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"
)

// DemoKey is the original app's demo key, known to the embedded key store.
const DemoKey = "00721b2a-046c-4ecc-a5df-5f808cc6c58f"

// Default listen addresses: demo mode (no key store configured) stays on
// loopback unless --listen says otherwise.
const (
	DefaultListen     = ":8088"
	DefaultDemoListen = "127.0.0.1:8088"
)

// Serve holds the gateway's settings.
type Serve struct {
	Listen string
	Path   string
	NodeID string
	// TLSCert and TLSKey are PEM files: set, the listener serves https://
	// and wss:// only (re-read when they change); both or neither.
	TLSCert, TLSKey string
	// AdvertiseAddr is this node's address in the node registry (empty:
	// the address it listens on).
	AdvertiseAddr     string
	PresenceHeartbeat time.Duration // node registry refresh; a node silent for two is gone
	Presence          bool          // per-key presence (GET /presence): off by default, it costs per key

	RedisURL            string
	Routing             string // "all" or "keys" (see --routing); Validate fills in the default
	RedisCluster        bool
	RedisWaitReplicas   int // with --redis-cluster: replicas that must have a recorded message before it is acknowledged
	Channel             string
	ConnectedChannel    string
	DisconnectedChannel string
	EventFormat         string // "bare" or "json"

	MongoURI        string
	MongoDB         string
	MongoCollection string
	MongoKeyField   string
	KeysFile        string
	KeyCheckTimeout time.Duration
	RecheckInterval time.Duration
	Auth            // JWT, JWKS or the auth hook (auth.go)

	IdleTimeout     time.Duration
	PollTimeout     time.Duration
	PingInterval    time.Duration
	WriteTimeout    time.Duration
	ShutdownTimeout time.Duration
	DrainPeriod     time.Duration // on SIGTERM, close clients over this long with 1012 before shutting down (0: at once, 1001)
	CoalesceGap     time.Duration // a WebSocket written less than this long ago waits, gathering frames
	Writers         int           // WebSocket writer goroutines (0: GOMAXPROCS/2, at least 1)

	HistorySize    int           // messages kept per key for resuming clients (0: off)
	HistoryTTL     time.Duration // how long a message is kept
	HistoryMetaTTL time.Duration // how long a key's epoch and last id are kept after its last publish or resume

	QueueBytes      int
	MaxMessageBytes int
	MaxClientBytes  int
	MaxConnections  int
	AllowedOrigins  []string
	AllowedHosts    []string // Host header values served; empty: any (demo mode: loopback names)
	PublishToken    string
	PublishAPI      bool
	UpstreamChannel string
	ClientRate      float64
	ClientBurst     int

	MaxSessionsPerKey  int
	MaxSessionsPerAddr int
	AuthFailRate       float64
	AuthFailBurst      int
	TrustedProxies     []string

	LogLevel        string
	LogFormat       string
	DebugAddr       string
	DebugAddrPublic bool // allow a non-loopback --debug-addr
	GCPercent       int
}

// Demo reports whether no key store is configured: the gateway then runs on
// the embedded demo key.
func (c *Serve) Demo() bool {
	return c.MongoURI == "" && c.KeysFile == "" && c.JWTKey == "" && c.JWKSURL == "" && c.AuthURL == ""
}

// ParseServe parses the serve sub-command's arguments. getenv is usually
// os.Getenv; out receives --help.
func ParseServe(args []string, getenv func(string) string, out io.Writer) (Serve, error) {
	c, _, err := parseServe(newFlagSet("wspubsub serve", out), args, getenv)
	return c, err
}

// parseServe declares the serve settings on f (which may carry flags of its
// own command: config's --format) and parses args, the environment and the
// --config file into them. Every mistake is a *UsageError.
func parseServe(f *flagSet, args []string, getenv func(string) string) (Serve, *flagSet, error) {
	var c Serve
	var file string // read by f.parse: it is the flag named "config"
	f.str(&file, "config", "", "TOML file of serve settings named as these flags (redis-url = \"redis://…\"); flags and WSPUBSUB_* variables win over it; wspubsub config shows the result")
	host, _ := os.Hostname()
	f.str(&c.Listen, "listen", DefaultListen, "address to listen on (demo mode, without --mongo-uri or --keys-file: "+DefaultDemoListen+")")
	f.str(&c.Path, "path", "/websocket", "URL path clients connect to")
	f.str(&c.TLSCert, "tls-cert", "", "PEM certificate chain: serve https:// and wss:// (HTTP/2 for EventSource and polling) instead of plain HTTP; re-read when it changes (needs --tls-key)")
	f.str(&c.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	f.str(&c.NodeID, "node-id", host, "this gateway's name in JSON events, presence and the node registry (unique per gateway)")
	f.str(&c.AdvertiseAddr, "advertise-addr", "", "this gateway's address as other machines reach it, listed by GET /nodes (empty: the address it listens on)")
	f.boolean(&c.Presence, "presence", false, "keep per-key presence (which keys are online, on which gateways, over which transports) for GET /presence and `wspubsub presence`: in Redis with --redis-url; costs ≈ 120 B of gateway memory per online key and one batched Redis write per key going online or offline (the node registry, GET /nodes, is always kept)")
	f.dur(&c.PresenceHeartbeat, "presence-heartbeat", 5*time.Second, "with --redis-url: refresh this node's registration this often; a node silent for two heartbeats (crashed) drops out of /presence and /nodes")
	f.str(&c.RedisURL, "redis-url", "", "Redis to subscribe and publish on, e.g. redis://127.0.0.1:6379 (empty: in-process broker)")
	f.str(&c.Routing, "routing", "", `how messages reach gateways: "all" (each gateway receives every message on --channel) or "keys" (each gateway receives only the messages of the keys connected to it, on per-key sharded channels; needs --redis-url and Redis 7; every gateway on one Redis must agree); empty: "keys" with --redis-cluster, else "all"`)
	f.boolean(&c.RedisCluster, "redis-cluster", false, "--redis-url is a comma-separated list of Redis Cluster seed addresses (redis://host:port or host:port); implies --routing keys")
	f.integer(&c.RedisWaitReplicas, "redis-wait-replicas", 0, "with --redis-cluster and history: acknowledge a publish only once this many replicas of each master involved have it (WAIT, 1 s): a failover then loses no acknowledged message")
	f.str(&c.Channel, "channel", "my_channel", "channel backends publish messages on")
	f.str(&c.ConnectedChannel, "connected-channel", "connected", "channel for connect events")
	f.str(&c.DisconnectedChannel, "disconnected-channel", "disconnected", "channel for disconnect events")
	f.str(&c.EventFormat, "event-format", "bare", `connect/disconnect event payload: "bare" (the key, as the original) or "json"`)
	f.str(&c.MongoURI, "mongo-uri", "", "MongoDB holding client keys, e.g. mongodb://127.0.0.1:27017 (empty: --keys-file or the demo key)")
	f.str(&c.MongoDB, "mongo-db", "myDB", "MongoDB database")
	f.str(&c.MongoCollection, "mongo-collection", "myCollection", "MongoDB collection")
	f.str(&c.MongoKeyField, "mongo-key-field", "_id", "document field holding the key")
	f.str(&c.KeysFile, "keys-file", "", "file with one key per line, re-read when it changes (used when --mongo-uri is empty)")
	f.dur(&c.KeyCheckTimeout, "key-check-timeout", 2*time.Second, "timeout of one key lookup")
	f.dur(&c.RecheckInterval, "recheck-interval", 5*time.Minute, "re-validate connected keys this often; removed keys are closed with 4403 (0 disables)")
	c.authFlags(f)
	f.dur(&c.IdleTimeout, "idle-timeout", 60*time.Second, "close a connection silent for this long")
	f.dur(&c.PollTimeout, "poll-timeout", 30*time.Second, "hold an empty long-poll this long before answering 200 with no body")
	f.dur(&c.PingInterval, "ping-interval", 25*time.Second, "send keep-alive pings this often (less than --idle-timeout)")
	f.dur(&c.WriteTimeout, "write-timeout", 10*time.Second, "drop a connection whose socket write blocks this long")
	f.dur(&c.CoalesceGap, "coalesce-gap", time.Millisecond, "a WebSocket connection written less than this long ago waits until it has passed, so a busy connection gets many frames per write; a message to a quiet one goes out at once (0: never wait)")
	f.integer(&c.Writers, "writers", 0, "WebSocket writer goroutines (0: half the CPUs, at least one, with helpers on the other CPUs that share small batches; fewer writers fall behind in a burst and coalesce more; a number sets exactly that many, without helpers)")
	f.dur(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "bound on graceful shutdown, after the drain (the process exits within --drain-period + --shutdown-timeout)")
	f.dur(&c.DrainPeriod, "drain-period", 5*time.Second, "on SIGTERM/SIGINT, refuse new connections, fail /readyz and close the clients with 1012 (reconnect elsewhere) spread over this long, then shut down; a second signal skips the rest (0: close everyone at once with 1001)")
	f.integer(&c.HistorySize, "history-size", 100, "messages kept per key so that clients connecting with ?since= resume without loss (0: no history, no ids)")
	f.dur(&c.HistoryTTL, "history-ttl", 5*time.Minute, "how long a message is kept in a key's history (and an idempotency key remembered)")
	f.dur(&c.HistoryMetaTTL, "history-meta-ttl", 24*time.Hour, "how long a key's epoch and last id are kept after its last message or resume (at least twice --history-ttl is used): a client that received everything resumes without gap after its messages expired")
	f.size(&c.QueueBytes, "queue-bytes", 1<<20, "per-connection outbound queue; overflow closes with 4008")
	f.size(&c.MaxMessageBytes, "max-message-bytes", 256<<10, "largest inbound published message")
	f.size(&c.MaxClientBytes, "max-client-bytes", 4<<10, "largest message a client may send; larger closes with 1009")
	f.integer(&c.MaxConnections, "max-connections", 0, "connection limit; beyond it HTTP 503 (0: open-file limit minus 256)")
	f.list(&c.AllowedOrigins, "allowed-origins", "browser origins allowed besides the gateway's own, comma-separated (https://app.example.com, *.example.com, *)")
	f.list(&c.AllowedHosts, "allowed-hosts", "Host header values served, comma-separated (push.example.com, *.example.com, 10.0.0.0/8, *); others get 421 (default: any; demo mode: localhost, *.localhost, 127.0.0.0/8, ::1)")
	f.str(&c.PublishToken, "publish-token", "", "bearer token required by POST /publish when set; also admits to /metrics, /status and /readyz details")
	f.boolean(&c.PublishAPI, "publish-api", true, "serve POST /publish (--publish-token, or without one direct loopback callers)")
	f.str(&c.UpstreamChannel, "upstream-channel", "", `publish client text other than "ping" here as {"key","data","conn","at"} (empty: ignore it)`)
	f.float(&c.ClientRate, "client-rate", 10, "client messages per second allowed per key (all its connections together); faster closes with 4029 (WebSocket) or answers 429 (POST)")
	f.integer(&c.ClientBurst, "client-burst", 20, "client messages allowed in a burst per key above --client-rate")
	f.integer(&c.MaxSessionsPerKey, "max-sessions-per-key", 16, "live connections of one key, every transport counted; more are refused with 4429 / HTTP 429 (0: no cap)")
	f.integer(&c.MaxSessionsPerAddr, "max-sessions-per-addr", 1024, "live connections from one client address (see --trusted-proxies); more are refused with 4429 / HTTP 429 (0: no cap)")
	f.float(&c.AuthFailRate, "auth-fail-rate", 1, "failed key checks allowed per second per client address; beyond the burst, attempts get 4429 / HTTP 429 without a key lookup")
	f.integer(&c.AuthFailBurst, "auth-fail-burst", 20, "failed key checks allowed in a burst per client address")
	f.listDefault(&c.TrustedProxies, "trusted-proxies", []string{"127.0.0.0/8", "::1"}, "proxies whose X-Forwarded-For / X-Real-IP name the client address, comma-separated IPs or CIDRs (\"none\": trust none)")
	f.str(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	f.str(&c.LogFormat, "log-format", "text", "text or json")
	f.integer(&c.GCPercent, "gc-percent", 100, "Go GC target (GOGC) when quiet: lower trades CPU for memory; while delivering ≥ 1,000 msg/s it rises to 400 (at most 256 MB beyond the live heap) and comes back once quiet")
	f.str(&c.DebugAddr, "debug-addr", "", "serve Go's pprof profiles on this loopback address, e.g. 127.0.0.1:6060 (empty: off)")
	f.boolean(&c.DebugAddrPublic, "debug-addr-public", false, "allow a non-loopback --debug-addr (pprof open to anyone who can reach it)")
	if err := f.parse(args, getenv); err != nil {
		return c, f, err
	}
	if f.NArg() > 0 {
		return c, f, &UsageError{Err: fmt.Errorf("unexpected arguments: %s (serve takes only flags)", strings.Join(f.Args(), " "))}
	}
	if c.Demo() && !f.isSet("listen") {
		c.Listen = DefaultDemoListen
	}
	if err := c.Validate(); err != nil {
		return c, f, &UsageError{Err: err}
	}
	return c, f, nil
}

// Validate checks the settings against each other.
func (c *Serve) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if !strings.HasPrefix(c.Path, "/") {
		bad("--path must start with /: %q", c.Path)
	}
	if c.EventFormat != "bare" && c.EventFormat != "json" {
		bad(`--event-format must be "bare" or "json": %q`, c.EventFormat)
	}
	for name, d := range map[string]time.Duration{"key-check-timeout": c.KeyCheckTimeout,
		"idle-timeout": c.IdleTimeout, "ping-interval": c.PingInterval, "write-timeout": c.WriteTimeout,
		"shutdown-timeout": c.ShutdownTimeout, "poll-timeout": c.PollTimeout} {
		if d <= 0 {
			bad("--%s must be positive: %v", name, d)
		}
	}
	if c.Routing == "" {
		c.Routing = "all"
		if c.RedisCluster {
			c.Routing = "keys"
		}
	}
	switch {
	case c.RedisWaitReplicas < 0 || c.RedisWaitReplicas > 0 && !c.RedisCluster:
		bad("--redis-wait-replicas must be 0, or positive with --redis-cluster: %d", c.RedisWaitReplicas)
	case c.RedisCluster && c.RedisURL == "":
		bad("--redis-cluster needs --redis-url (the cluster's seed addresses)")
	case c.RedisCluster && c.Routing != "keys":
		bad("--redis-cluster needs --routing keys (sharded pub/sub spreads the traffic over the shards)")
	case c.Routing != "all" && c.Routing != "keys":
		bad(`--routing must be "all" or "keys": %q`, c.Routing)
	case c.Routing == "keys" && c.RedisURL == "":
		bad("--routing keys needs --redis-url (one gateway on the in-process broker has nothing to route)")
	}
	if c.CoalesceGap < 0 || c.CoalesceGap > time.Second {
		bad("--coalesce-gap must be between 0 and 1s: %v", c.CoalesceGap)
	}
	if c.Writers < 0 {
		bad("--writers must not be negative: %d", c.Writers)
	}
	if c.RecheckInterval < 0 {
		bad("--recheck-interval must not be negative: %v", c.RecheckInterval)
	}
	c.validateAuth(bad)
	if c.DrainPeriod < 0 {
		bad("--drain-period must not be negative: %v", c.DrainPeriod)
	}
	if c.PresenceHeartbeat < 100*time.Millisecond {
		bad("--presence-heartbeat must be at least 100ms: %v", c.PresenceHeartbeat)
	}
	if c.PingInterval >= c.IdleTimeout {
		bad("--ping-interval (%v) must be less than --idle-timeout (%v)", c.PingInterval, c.IdleTimeout)
	}
	if c.QueueBytes < c.MaxMessageBytes {
		bad("--queue-bytes (%d) must hold at least one message of --max-message-bytes (%d)", c.QueueBytes, c.MaxMessageBytes)
	}
	if c.MaxMessageBytes <= 0 || c.MaxClientBytes <= 0 {
		bad("--max-message-bytes and --max-client-bytes must be positive")
	}
	if c.ClientRate <= 0 || c.ClientBurst <= 0 {
		bad("--client-rate and --client-burst must be positive")
	}
	if c.MaxSessionsPerKey < 0 || c.MaxSessionsPerAddr < 0 {
		bad("--max-sessions-per-key and --max-sessions-per-addr must not be negative")
	}
	if c.AuthFailRate <= 0 || c.AuthFailBurst <= 0 {
		bad("--auth-fail-rate and --auth-fail-burst must be positive")
	}
	for _, p := range c.TrustedProxies {
		if _, err := ParsePrefix(p); err != nil {
			bad("--trusted-proxies: %v", err)
		}
	}
	if c.HistorySize < 0 {
		bad("--history-size must not be negative")
	}
	if c.HistorySize > 0 && c.HistoryTTL < time.Second {
		bad("--history-ttl must be at least 1s when --history-size is on: %v", c.HistoryTTL)
	}
	if c.HistorySize > 0 && c.HistoryMetaTTL < c.HistoryTTL {
		bad("--history-meta-ttl must be at least --history-ttl (%v): %v", c.HistoryTTL, c.HistoryMetaTTL)
	}
	if c.MaxConnections < 0 {
		bad("--max-connections must not be negative")
	}
	if c.Channel == "" || c.ConnectedChannel == "" || c.DisconnectedChannel == "" {
		bad("channel names must not be empty")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("--log-level must be debug, info, warn or error: %q", c.LogLevel)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("--log-format must be text or json: %q", c.LogFormat)
	}
	for _, h := range c.AllowedHosts {
		if !validHostPattern(h) {
			bad("--allowed-hosts: %q is not a host name, *.suffix, IP address, CIDR range or *", h)
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("--tls-cert and --tls-key go together: give both PEM files (or neither, for plain HTTP)")
	}
	if c.DebugAddr != "" {
		host, _, err := net.SplitHostPort(c.DebugAddr)
		switch {
		case err != nil:
			bad("--debug-addr must be host:port: %q", c.DebugAddr)
		case !IsLoopbackHost(host) && !c.DebugAddrPublic:
			bad("--debug-addr %q is not a loopback address: pprof would be open to anyone who can reach it (use 127.0.0.1:PORT, or add --debug-addr-public)", c.DebugAddr)
		}
	}
	return errors.Join(errs...)
}

// IsLoopbackHost reports whether host (a Host header value or the host of
// an address, with or without port) names this machine only: localhost,
// *.localhost, 127.0.0.0/8 or ::1. An empty host (all interfaces) is not.
func IsLoopbackHost(host string) bool {
	host = HostOnly(host)
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// HostOnly strips the port and IPv6 brackets from a Host header value and
// lower-cases it, dropping a trailing dot: "[::1]:8088" is "::1",
// "LocalHost.:80" is "localhost", "::1" stays "::1".
func HostOnly(host string) string {
	switch {
	case strings.HasPrefix(host, "["):
		if i := strings.IndexByte(host, ']'); i > 0 {
			host = host[1:i]
		}
	case strings.Count(host, ":") == 1:
		host = host[:strings.IndexByte(host, ':')]
	}
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

func validHostPattern(p string) bool {
	if p == "*" {
		return true
	}
	if strings.Contains(p, "/") {
		_, _, err := net.ParseCIDR(p)
		return err == nil
	}
	p = strings.TrimPrefix(p, "*.")
	if strings.Contains(p, ":") || strings.HasPrefix(p, "[") {
		return net.ParseIP(strings.Trim(p, "[]")) != nil
	}
	return p != "" && !strings.ContainsAny(p, " *?#@")
}

// Publish holds the publish sub-command's settings.
type Publish struct {
	RedisURL  string
	Channel   string
	Gateway   string
	Token     string
	To        []string
	Broadcast bool
	Timeout   time.Duration
	Message   string // the envelope, or with To/Broadcast only the data
	// IdempotencyKey makes a retry safe: a repeat within the gateway's
	// --history-ttl is acknowledged but not delivered again.
	IdempotencyKey string
	Plain          bool // Redis PUBLISH without history (the original's way)
}

// ParsePublish parses the publish sub-command's arguments.
func ParsePublish(args []string, getenv func(string) string, out io.Writer) (Publish, error) {
	var c Publish
	f := newFlagSet("wspubsub publish", out)
	f.str(&c.RedisURL, "redis-url", "", "publish through this Redis (empty: POST to --gateway)")
	f.str(&c.Channel, "channel", "my_channel", "Redis channel the gateway subscribes to")
	f.str(&c.Gateway, "gateway", "http://127.0.0.1:8088", "running gateway to POST /publish to")
	f.str(&c.Token, "publish-token", "", "bearer token for a non-loopback gateway")
	f.list(&c.To, "to", "recipient keys, comma-separated; the argument is then just the data")
	f.boolean(&c.Broadcast, "broadcast", false, "send to every connection; the argument is then just the data")
	f.dur(&c.Timeout, "timeout", 5*time.Second, "give up after this long")
	f.str(&c.IdempotencyKey, "idempotency-key", "", "a publish repeated with the same key within --history-ttl is acknowledged but not delivered again (letters, digits, -_.:~; at most 128)")
	f.boolean(&c.Plain, "plain", false, "with --redis-url: plain PUBLISH, not recorded in history (at-most-once, the original's way)")
	f.Usage = func() {
		fmt.Fprintf(f.Output(), "Usage: wspubsub publish [flags] '<message JSON>' (or - to read stdin)\n\n")
		f.PrintDefaults()
	}
	if err := f.parse(args, getenv); err != nil {
		return c, err
	}
	if f.NArg() != 1 {
		return c, &UsageError{Err: errors.New("publish takes exactly one argument: the message JSON (or - for stdin)")}
	}
	c.Message = f.Arg(0)
	if len(c.To) > 0 && c.Broadcast {
		return c, &UsageError{Err: errors.New("--to and --broadcast exclude each other")}
	}
	return c, nil
}

// ParsePrefix parses an IP or a CIDR (an IP is a prefix of its full
// length); "none" is the empty prefix, which contains nothing.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "none" {
		return netip.Prefix{}, nil
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("not an IP or CIDR: %q", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not an IP or CIDR: %q", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
