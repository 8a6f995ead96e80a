package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/wspubsub/wspubsub/internal/broker"
)

// publisher sends batches of messages to the gateway's inbound channel.
type publisher interface {
	publish(ctx context.Context, msgs [][]byte) error
	close()
}

func newPublisher(ctx context.Context, cfg Config) (publisher, error) {
	idem := ""
	if cfg.Durable && !cfg.NoIdempotencyKeys {
		// Unique per run and message: the bench never retries, so no
		// repeat is ever dropped; the gateway still stores each key.
		idem = fmt.Sprintf("bench-%s-", strconv.FormatInt(time.Now().UnixNano(), 36))
	}
	if cfg.RedisURL == "" {
		return &httpPublisher{url: strings.TrimSuffix(cfg.Target, "/") + "/publish", token: cfg.Token,
			durable: cfg.Durable, idem: idem}, nil
	}
	c, err := redisUniversal(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if rc, ok := c.(*redis.Client); ok && !cfg.Durable && cfg.Routing != "keys" {
		raw, err := newRawPublisher(ctx, rc.Options(), cfg.Channel)
		if err != nil {
			c.Close()
			return nil, err
		}
		if raw != nil {
			c.Close()
			return raw, nil
		}
	}
	p := &redisPublisher{c: c, channel: cfg.Channel, durable: cfg.Durable, idem: idem}
	if cfg.Routing == "keys" {
		p.route = &routePlan{broadcast: broker.BroadcastChannel(cfg.Channel), durable: cfg.Durable, cluster: cfg.RedisCluster}
	} else if cc, ok := c.(*redis.ClusterClient); ok {
		// A plain PUBLISH names no key: a cluster pipeline would spread it
		// over the masters, and one key's messages would overtake each
		// other on the way. One connection keeps them in order, as one
		// publisher's.
		m, err := cc.MasterForKey(ctx, cfg.Channel)
		if err != nil {
			cc.Close()
			return nil, fmt.Errorf("finding a master for plain PUBLISH: %w", err)
		}
		p.c, p.owner = m, cc
	}
	return p, nil
}

func redisClient(ctx context.Context, redisURL string) (*redis.Client, error) {
	opt, err := redis.ParseURL(redisURL)
	if err != nil {
		return nil, fmt.Errorf("parsing --redis-url: %w", broker.URLProblem(redisURL, err))
	}
	c := redis.NewClient(opt)
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		return nil, fmt.Errorf("connecting to Redis: %w", err)
	}
	return c, nil
}

// redisUniversal is a client of --redis-url: one server, or with
// --redis-cluster a Redis Cluster from its seeds (redis://host:port or
// host:port, comma-separated), whose pipelines send each command to the
// master of its slot.
func redisUniversal(ctx context.Context, cfg Config) (redis.UniversalClient, error) {
	if !cfg.RedisCluster {
		return redisClient(ctx, cfg.RedisURL)
	}
	u, err := broker.NewClient(cfg.RedisURL, true, 0)
	if err != nil {
		return nil, fmt.Errorf("--redis-cluster: %w", err)
	}
	c := u.(*redis.ClusterClient)
	// Every master answers: the slot map is loaded and the cluster whole.
	if err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.Ping(ctx).Err() }); err != nil {
		c.Close()
		return nil, fmt.Errorf("connecting to the Redis Cluster: %w", err)
	}
	return c, nil
}

type redisPublisher struct {
	c       redis.UniversalClient
	channel string
	durable bool       // FCALL wspubsub_publish_batch instead of PUBLISH
	idem    string     // idempotency-key prefix ("" = none)
	n       uint64     // messages published (idempotency-key suffix)
	route   *routePlan // --routing keys: publish as a routed backend does
	cmds    []routedCmd
	owner   io.Closer // the cluster client c belongs to, if any
	// single: the functions loaded have no batch form (an older gateway):
	// one FCALL wspubsub_publish per message.
	single bool
	args   []any // scratch: a batch's arguments
}

// durableBatch is how many messages go in one FCALL
// wspubsub_publish_batch: enough to spread the call's cost, few enough
// that Redis is not held for long (≈ 1 ms here).
const durableBatch = 64

// publish sends the batch as one pipeline: one round trip (per master, in
// parallel, on a cluster). Durable, the messages go durableBatch at a time
// in FCALL wspubsub_publish_batch 0 <envelope> <idempotency-key> …: the
// gateways' Redis function records each in every recipient's history and
// publishes it, atomically. Routed, see routePlan.
func (p *redisPublisher) publish(ctx context.Context, msgs [][]byte) error {
	if p.durable && p.route == nil && !p.single {
		return p.publishBatches(ctx, msgs)
	}
	pipe := p.c.Pipeline()
	for _, m := range msgs {
		if p.route != nil {
			if err := p.routed(ctx, pipe, m); err != nil {
				return err
			}
			continue
		}
		switch {
		case !p.durable:
			pipe.Publish(ctx, p.channel, m)
		case p.idem != "":
			pipe.FCall(ctx, "wspubsub_publish", nil, m, p.nextIdem())
		default:
			pipe.FCall(ctx, "wspubsub_publish", nil, m)
		}
	}
	_, err := pipe.Exec(ctx)
	return p.durableError("wspubsub_publish", err)
}

func (p *redisPublisher) nextIdem() string {
	p.n++
	return p.idem + strconv.FormatUint(p.n, 36)
}

// publishBatches is publish's durable form: each message's answer (or
// error) is checked.
func (p *redisPublisher) publishBatches(ctx context.Context, msgs [][]byte) error {
	pipe := p.c.Pipeline()
	n0 := p.n
	var calls []*redis.Cmd
	for start := 0; start < len(msgs); start += durableBatch {
		args := p.args[:0]
		for _, m := range msgs[start:min(start+durableBatch, len(msgs))] {
			idem := ""
			if p.idem != "" {
				idem = p.nextIdem()
			}
			args = append(args, m, idem)
		}
		calls = append(calls, pipe.FCall(ctx, "wspubsub_publish_batch", nil, args...))
		p.args = args[:0]
	}
	_, err := pipe.Exec(ctx)
	if err != nil && strings.Contains(err.Error(), "Function not found") && !p.single {
		// An older gateway's functions: one call per message, the same
		// idempotency keys (nothing was recorded).
		p.single, p.n = true, n0
		return p.publish(ctx, msgs)
	}
	if err != nil {
		return p.durableError("wspubsub_publish_batch", err)
	}
	for _, c := range calls {
		answers, err := c.Slice()
		if err != nil {
			return fmt.Errorf("FCALL wspubsub_publish_batch: %w", err)
		}
		for _, a := range answers {
			if e, ok := a.(error); ok {
				return fmt.Errorf("FCALL wspubsub_publish_batch: a message refused: %w", e)
			}
		}
	}
	return nil
}

// durableError says what a "Function not found" means here.
func (p *redisPublisher) durableError(fn string, err error) error {
	if err != nil && p.durable && strings.Contains(err.Error(), "Function not found") {
		return fmt.Errorf("FCALL %s: %w (no gateway with --history-size > 0 has loaded its functions into this Redis)", fn, err)
	}
	return err
}

// routed queues m's routed commands on pipe; the FCALLs of one message
// (one per slot) share its idempotency key, as the gateway's do.
func (p *redisPublisher) routed(ctx context.Context, pipe redis.Pipeliner, m []byte) error {
	var err error
	if p.cmds, err = p.route.plan(p.cmds[:0], m); err != nil {
		return err
	}
	idem := ""
	if p.durable && p.idem != "" {
		idem = p.nextIdem()
	}
	for _, c := range p.cmds {
		switch {
		case !c.fcall:
			pipe.SPublish(ctx, c.channel, c.payload)
		case idem != "":
			pipe.FCall(ctx, "wspubsub_publish", c.keys, c.payload, idem)
		default:
			pipe.FCall(ctx, "wspubsub_publish", c.keys, c.payload)
		}
	}
	return nil
}

func (p *redisPublisher) close() {
	if p.owner != nil {
		p.owner.Close()
		return
	}
	p.c.Close()
}

type httpPublisher struct {
	url, token string
	durable    bool   // check that the gateway recorded each message
	idem       string // Idempotency-Key prefix ("" = none)
	n          uint64
}

func (p *httpPublisher) publish(ctx context.Context, msgs [][]byte) error {
	for _, m := range msgs {
		req, _ := http.NewRequestWithContext(ctx, "POST", p.url, bytes.NewReader(m))
		req.Header.Set("Content-Type", "application/json") // the gateway refuses anything else
		if p.token != "" {
			req.Header.Set("Authorization", "Bearer "+p.token)
		}
		if p.idem != "" {
			p.n++
			req.Header.Set("Idempotency-Key", p.idem+strconv.FormatUint(p.n, 36))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("POST /publish: %w", err)
		}
		var body []byte
		if p.durable {
			body, _ = io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return fmt.Errorf("POST /publish: %s", resp.Status)
		}
		// With history on the gateway answers 202 once recorded, with the
		// ids: without them it only published (history off).
		if p.durable && !bytes.Contains(body, []byte(`"ids":[`)) {
			return fmt.Errorf("POST /publish answered %s without ids: is the gateway's history on (--history-size)?", bytes.TrimSpace(body))
		}
	}
	return nil
}

func (p *httpPublisher) close() {}

// provision makes the keys bench-0 … bench-(N-1) known to the gateway.
func provision(ctx context.Context, cfg Config) error {
	switch cfg.Keys {
	case "", "none":
		return nil
	case "file":
		if cfg.KeysFile == "" {
			return fmt.Errorf("--keys file needs --keys-file (the gateway's --keys-file)")
		}
		var b strings.Builder
		for i := range cfg.Conns {
			fmt.Fprintf(&b, "%s%d\n", cfg.KeyPrefix, i)
		}
		if err := os.WriteFile(cfg.KeysFile, []byte(b.String()), 0o600); err != nil {
			return fmt.Errorf("writing keys file: %w", err)
		}
		time.Sleep(1100 * time.Millisecond) // the gateway re-reads it at most once a second
		return nil
	case "mongo":
		mc, err := mongo.Connect(options.Client().ApplyURI(cfg.MongoURI))
		if err != nil {
			return fmt.Errorf("connecting to MongoDB: %w", err)
		}
		defer mc.Disconnect(ctx)
		coll := mc.Database(cfg.MongoDB).Collection(cfg.MongoCollection)
		docs := make([]any, 0, 1000)
		flush := func() error {
			if len(docs) == 0 {
				return nil
			}
			_, err := coll.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
			docs = docs[:0]
			if err != nil && !mongo.IsDuplicateKeyError(err) {
				return fmt.Errorf("inserting keys: %w", err)
			}
			return nil
		}
		for i := range cfg.Conns {
			docs = append(docs, bson.D{{Key: "_id", Value: fmt.Sprintf("%s%d", cfg.KeyPrefix, i)}})
			if len(docs) == cap(docs) {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return flush()
	}
	return fmt.Errorf("unknown --keys %q (mongo, file, none)", cfg.Keys)
}

// gatewayProbe reads the gateway's RSS and CPU time: from /proc when its
// pid is known (same machine), else from its /metrics (open to loopback
// callers, or with the publish token).
type gatewayProbe struct {
	pid     int
	metrics string
	token   string
}

func newGatewayProbe(target string, pid int, token string) *gatewayProbe {
	return &gatewayProbe{pid: pid, metrics: strings.TrimSuffix(target, "/") + "/metrics", token: token}
}

func (g *gatewayProbe) get() (*http.Response, error) {
	req, err := http.NewRequest("GET", g.metrics, nil)
	if err != nil {
		return nil, err
	}
	if g.token != "" {
		req.Header.Set("Authorization", "Bearer "+g.token)
	}
	return http.DefaultClient.Do(req)
}

// The gateway's WebSocket writers' counters (frames per write).
const (
	metricSocketWrites  = "wspubsub_socket_writes_total"
	metricFramesWritten = "wspubsub_frames_written_total"
)

// metric reads one sample of the gateway's /metrics (0 if absent).
func (g *gatewayProbe) metric(name string) float64 { return g.values(name)[0] }

// values reads samples of the gateway's /metrics in one request (0 for
// those absent).
func (g *gatewayProbe) values(names ...string) []float64 {
	all := g.series(names...)
	out := make([]float64, len(names))
	for i, name := range names {
		out[i] = all[name]
	}
	return out
}

// series reads every sample of the gateway's /metrics whose name is one of
// names (every label set: name{label="…"} → value), or that is one of
// names written with its labels.
func (g *gatewayProbe) series(names ...string) map[string]float64 {
	out := map[string]float64{}
	resp, err := g.get()
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 || strings.HasPrefix(line, "#") {
			continue
		}
		name := line[:sp]
		base, _, _ := strings.Cut(name, "{")
		for _, n := range names {
			if base == n || name == n { // a name alone, or with its labels
				out[name], _ = strconv.ParseFloat(line[sp+1:], 64)
			}
		}
	}
	return out
}

func (g *gatewayProbe) read() (rss int64, cpu float64) {
	if g.pid > 0 {
		if rss, cpu, err := procUsage(g.pid); err == nil {
			return rss, cpu
		}
	}
	resp, err := g.get()
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "process_resident_memory_bytes "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			rss = int64(f)
		}
		if v, ok := strings.CutPrefix(line, "process_cpu_seconds_total "); ok {
			cpu, _ = strconv.ParseFloat(v, 64)
		}
	}
	return rss, cpu
}

// procUsage reads a process's resident memory (VmRSS) and CPU time so far
// (user + system, all threads) from /proc.
func procUsage(pid int) (rss int64, cpu float64, err error) {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			rss = kb * 1024
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	cpu, err = statCPU(stat)
	return rss, cpu, err
}

// statCPU is utime + stime of a /proc/<pid>/stat line, in seconds (the
// fields after the command name, which may hold spaces and parentheses).
func statCPU(stat []byte) (float64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 > len(stat) {
		return 0, errors.New("/proc stat: no command name")
	}
	f := strings.Fields(string(stat[i+2:]))
	if len(f) < 13 {
		return 0, errors.New("/proc stat: too few fields")
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("/proc stat: bad utime or stime")
	}
	return (ut + st) / 100, nil // USER_HZ
}
