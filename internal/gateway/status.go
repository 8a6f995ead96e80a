package gateway

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/presence"
	"github.com/wspubsub/wspubsub/internal/status"
	"github.com/wspubsub/wspubsub/internal/web"
)

// How fresh the status page's view of the backends is: the key store's
// ping and the node registry are read at most once per probeMaxAge (however
// many pages poll), each bounded by probeTimeout.
const (
	probeMaxAge  = 2 * time.Second
	probeTimeout = time.Second
	maxErrorText = 160 // the node registry's error as shown: enough to tell what, not a dump
)

// statusPage is the state behind /status and /status.json (status.go).
type statusPage struct {
	sampler *status.Sampler
	started time.Time

	mu     sync.Mutex // one probe at a time; the others wait and share it
	probed time.Time
	last   statusProbe
}

// statusProbe is what one look at the backends found.
type statusProbe struct {
	storeErr string // "" when the store answered
	nodes    []presence.Node
	nodesErr string
}

// newStatusPage builds the sampler over this gateway's counters (read
// once a second by one goroutine started in Run; nothing on the message
// path).
func (g *Gateway) newStatusPage() {
	g.statusPage = &statusPage{started: time.Now(), sampler: status.New(status.Config{Read: g.readCounters})}
}

// readCounters reads the metrics the gateway keeps anyway.
func (g *Gateway) readCounters() status.Counters {
	m := g.metrics
	conns := map[string]int{}
	for tr, v := range vecValues(m.Connections) {
		conns[tr] = int(v)
	}
	return status.Counters{
		Connections: conns,
		MessagesIn:  counterValue(m.MessagesIn),
		Deliveries:  counterValue(m.Deliveries),
		Drops:       vecValues(m.Drops),
		Disconnects: vecValues(m.Disconnects),
		Rejections:  vecValues(m.Rejections),
	}
}

// counterValue reads one counter or gauge.
func counterValue(c prometheus.Metric) float64 {
	var d dto.Metric
	if c.Write(&d) != nil {
		return 0
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// vecValues reads a one-label vector: label value → value.
func vecValues(c prometheus.Collector) map[string]float64 {
	ch := make(chan prometheus.Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	out := map[string]float64{}
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil || len(d.Label) == 0 {
			continue
		}
		out[d.Label[0].GetValue()] = counterValue(m)
	}
	return out
}

// serveStatusPage is GET /status (and its script and style): the guard of
// /metrics, then the embedded page.
func (g *Gateway) serveStatusPage() http.HandlerFunc {
	page := web.StatusHandler()
	return func(w http.ResponseWriter, r *http.Request) {
		if c := g.identify(r); !c.trustedReader() {
			g.refuseCaller(w, c, "/status")
			return
		}
		page.ServeHTTP(w, r)
	}
}

// statusJSON is the answer of GET /status.json.
type statusJSON struct {
	Node        nodeStatus         `json:"node"`
	Now         int64              `json:"now"` // Unix ms
	Draining    bool               `json:"draining"`
	Broker      backendStatus      `json:"broker"`
	Store       backendStatus      `json:"store"`
	Connections map[string]int     `json:"connections"` // now, by transport
	MessagesIn  float64            `json:"messages_in"` // since start
	Deliveries  float64            `json:"deliveries"`
	Drops       map[string]float64 `json:"drops"` // since start, by reason
	Disconnects map[string]float64 `json:"disconnects"`
	Rejections  map[string]float64 `json:"rejections"`
	Nodes       []presence.Node    `json:"nodes"`
	NodesError  string             `json:"nodes_error,omitempty"`
	Series      status.Series      `json:"series"`
}

type nodeStatus struct {
	ID      string  `json:"id"`
	Addr    string  `json:"addr"`
	Version string  `json:"version"`
	Started int64   `json:"started"` // Unix ms
	Uptime  float64 `json:"uptime_s"`
}

// backendStatus says what a backend is and whether it works.
type backendStatus struct {
	Kind   string `json:"kind"`   // "in-process", "Redis", "Redis Cluster"; "memory", "file", "MongoDB"
	Detail string `json:"detail"` // channel, path, database: what an operator checks first
	Ready  bool   `json:"ready"`
	Error  string `json:"error,omitempty"`
}

// serveStatusJSON is GET /status.json[?since=<Unix ms>]: the node, its
// backends and the sampled history (only the samples after since, so a
// polling page fetches one sample at a time).
func (g *Gateway) serveStatusJSON(w http.ResponseWriter, r *http.Request) {
	if c := g.identify(r); !c.trustedReader() {
		g.refuseCaller(w, c, "/status.json")
		return
	}
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "since must be a time in Unix milliseconds"})
			return
		}
		since = time.UnixMilli(ms)
	}
	sp := g.statusPage
	probe := sp.probe(r.Context(), g)
	series := sp.sampler.Series(since)
	now := time.Now()
	out := statusJSON{
		Node: nodeStatus{ID: g.cfg.NodeID, Addr: g.advertiseAddr(), Version: version(),
			Started: sp.started.UnixMilli(), Uptime: now.Sub(sp.started).Seconds()},
		Now: now.UnixMilli(), Draining: g.hub.Draining(),
		Broker: g.brokerStatus(), Store: g.storeStatus(probe.storeErr),
		Connections: series.Totals.Connections, MessagesIn: series.Totals.MessagesIn, Deliveries: series.Totals.Deliveries,
		Drops: nonZero(series.Totals.Drops), Disconnects: nonZero(series.Totals.Disconnects), Rejections: nonZero(series.Totals.Rejections),
		Nodes: probe.nodes, NodesError: probe.nodesErr, Series: series,
	}
	if out.Connections == nil { // before the first sample
		out.Connections = map[string]int{}
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, out)
}

// probe pings the key store and reads the node registry, or returns what
// a probe less than probeMaxAge old found.
func (sp *statusPage) probe(ctx context.Context, g *Gateway) statusProbe {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if !sp.probed.IsZero() && time.Since(sp.probed) < probeMaxAge {
		return sp.last
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), probeTimeout)
	defer cancel()
	var p statusProbe
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := g.store.Ping(ctx); err != nil {
			p.storeErr = keystore.Reason(err) // what /readyz says: one short line
		}
	})
	nodes, err := g.presence.Nodes(ctx)
	wg.Wait()
	if err != nil {
		p.nodesErr = shortError(err)
	}
	p.nodes = nodes
	if p.nodes == nil {
		p.nodes = []presence.Node{}
	}
	sp.probed, sp.last = time.Now(), p
	return p
}

// shortError is an error's first line, cut to maxErrorText.
func shortError(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	if len(s) > maxErrorText {
		s = s[:maxErrorText] + "…"
	}
	return s
}

func nonZero(m map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// brokerStatus says which broker this is and whether it is subscribed.
func (g *Gateway) brokerStatus() backendStatus {
	b := backendStatus{Ready: g.broker.Ready(), Detail: "channel " + g.cfg.Channel}
	switch g.broker.(type) {
	case *broker.Memory:
		b.Kind = "in-process"
	case *broker.Redis:
		b.Kind = "Redis"
		if g.cfg.RedisCluster {
			b.Kind = "Redis Cluster"
		}
		if hosts := redisHosts(g.cfg.RedisURL); hosts != "" {
			b.Detail = hosts + ", " + b.Detail
		}
		b.Detail += ", routing " + g.cfg.Routing
	default:
		b.Kind = fmt.Sprintf("%T", g.broker)
	}
	if !b.Ready {
		b.Error = "not subscribed"
	}
	return b
}

// redisHosts is the host:port of each Redis URL in raw, without
// credentials or options.
func redisHosts(raw string) string {
	var hosts []string
	for _, part := range strings.Split(raw, ",") {
		part = strings.TrimSpace(part)
		if u, err := url.Parse(part); err == nil && u.Host != "" {
			hosts = append(hosts, u.Host)
		} else if !strings.ContainsAny(part, "@/?") && part != "" {
			hosts = append(hosts, part) // a bare host:port seed
		}
	}
	return strings.Join(hosts, " ")
}

// storeStatus says which key store this is and whether it answered.
func (g *Gateway) storeStatus(pingErr string) backendStatus {
	s := backendStatus{Ready: pingErr == "", Error: pingErr}
	switch st := g.store.(type) {
	case interface{ Kind() string }: // a store that names itself
		s.Kind = st.Kind()
	case *keystore.Mongo:
		s.Kind, s.Detail = "MongoDB", g.cfg.MongoDB+"."+g.cfg.MongoCollection
	case *keystore.File:
		s.Kind, s.Detail = "file", g.cfg.KeysFile
	case *keystore.Memory:
		s.Kind = "memory"
		if g.demo {
			s.Detail = "the demo key only"
		}
	default:
		s.Kind = fmt.Sprintf("%T", g.store)
	}
	return s
}
