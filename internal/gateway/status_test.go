package gateway

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/status"
)

// stepClock is a sampler clock the test moves.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *stepClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// statusOf fetches /status.json from loopback and decodes it.
func statusOf(t *testing.T, tg *testGateway, query string) statusJSON {
	t.Helper()
	w := tg.do("GET", "127.0.0.1:8088", "/status.json"+query, fromLoopback, "")
	if w.Code != http.StatusOK {
		t.Fatalf("/status.json%s: %d %s", query, w.Code, w.Body)
	}
	var s statusJSON
	if err := json.Unmarshal(w.Body.Bytes(), &s); err != nil {
		t.Fatalf("decoding /status.json: %v: %s", err, w.Body)
	}
	return s
}

func TestStatusJSONRatesFromCounters(t *testing.T) {
	tg := newTestGateway(t, nil, "--node-id", "gw-test")
	clock := &stepClock{t: time.Unix(1_800_000_000, 0)}
	// The sampler Run would start, driven by hand on a clock the test moves.
	tg.statusPage.sampler = status.New(status.Config{Read: tg.readCounters, Now: clock.now})
	m := tg.metrics
	tg.statusPage.sampler.Sample()

	clock.add(time.Second)
	m.Connections.WithLabelValues("websocket").Set(3)
	m.Connections.WithLabelValues("polling").Set(1)
	m.MessagesIn.Add(5)
	m.Deliveries.Add(15)
	tg.statusPage.sampler.Sample()

	clock.add(2 * time.Second) // a late tick: rates over the time that passed
	m.MessagesIn.Add(10)
	m.Deliveries.Add(40)
	m.Drops.WithLabelValues("invalid_json").Add(4)
	m.Disconnects.WithLabelValues(metrics.DiscClient).Add(2)
	m.Connections.WithLabelValues("websocket").Set(1)
	tg.statusPage.sampler.Sample()

	s := statusOf(t, tg, "")
	if !slices.Equal(s.Series.In, []float64{5, 5}) || !slices.Equal(s.Series.Out, []float64{15, 20}) {
		t.Errorf("in %v out %v, want [5 5] [15 20]", s.Series.In, s.Series.Out)
	}
	if !slices.Equal(s.Series.Drops, []float64{0, 2}) || !slices.Equal(s.Series.Disconnects, []float64{0, 1}) {
		t.Errorf("drops %v disconnects %v", s.Series.Drops, s.Series.Disconnects)
	}
	if !slices.Equal(s.Series.Connections["websocket"], []int{3, 1}) || s.Connections["websocket"] != 1 || s.Connections["polling"] != 1 {
		t.Errorf("connections %v now %v", s.Series.Connections, s.Connections)
	}
	if s.MessagesIn != 15 || s.Deliveries != 55 || s.Drops["invalid_json"] != 4 || s.Disconnects[metrics.DiscClient] != 2 {
		t.Errorf("totals: in %v out %v drops %v disconnects %v", s.MessagesIn, s.Deliveries, s.Drops, s.Disconnects)
	}
	if _, ok := s.Drops["too_large"]; ok {
		t.Errorf("reasons never seen are listed: %v", s.Drops)
	}
	if s.Node.ID != "gw-test" || s.Node.Version == "" || s.Node.Uptime < 0 {
		t.Errorf("node %+v", s.Node)
	}
	if s.Broker != (backendStatus{Kind: "in-process", Detail: "channel my_channel", Ready: true}) {
		t.Errorf("broker %+v", s.Broker)
	}
	if s.Store.Kind != "memory" || !s.Store.Ready || s.Store.Detail != "the demo key only" {
		t.Errorf("store %+v", s.Store)
	}
	if len(s.Nodes) != 1 || s.Nodes[0].ID != "gw-test" {
		t.Errorf("nodes %+v", s.Nodes)
	}

	// since: only the samples after it, which is what a polling page asks.
	newer := statusOf(t, tg, "?since="+itoa(s.Series.T[0]))
	if !slices.Equal(newer.Series.T, s.Series.T[1:]) || !slices.Equal(newer.Series.Out, []float64{20}) {
		t.Errorf("since %d: t %v out %v", s.Series.T[0], newer.Series.T, newer.Series.Out)
	}
	if w := tg.do("GET", "127.0.0.1:8088", "/status.json?since=yesterday", fromLoopback, ""); w.Code != http.StatusBadRequest {
		t.Errorf("since=yesterday: %d, want 400", w.Code)
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

// A store that does not answer shows as not ready, with its error cut
// short; the page is still served.
func TestStatusJSONStoreDown(t *testing.T) {
	tg := newTestGateway(t, failingStore{})
	s := statusOf(t, tg, "")
	if s.Store.Ready || !strings.Contains(s.Store.Error, "keys.txt") {
		t.Errorf("store %+v", s.Store)
	}
	long := strings.Repeat("x", 1000) + "\nsecond line"
	if got := shortError(errString(long)); len(got) > maxErrorText+len("…") || strings.Contains(got, "second") {
		t.Errorf("shortError kept %d bytes: %.40q", len(got), got)
	}
	if got := redisHosts("redis://user:pw@10.0.0.1:6379/0?dial_timeout=1s,10.0.0.2:6380"); got != "10.0.0.1:6379 10.0.0.2:6380" {
		t.Errorf("redisHosts = %q", got)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// /status and /status.json admit whom /metrics admits: local callers and
// the token's holders.
func TestStatusOnlyForTrustedCallers(t *testing.T) {
	open := newTestGateway(t, keystore.NewMemory("k"))
	tok := newTestGateway(t, keystore.NewMemory("k"), "--publish-token", "s3cret")
	for _, path := range []string{"/status", "/status.json", "/status.js", "/status.css"} {
		for _, c := range []struct {
			g      *testGateway
			remote string
			header []string
			want   int
		}{
			{open, fromLoopback, nil, http.StatusOK},
			{open, fromStranger, nil, http.StatusForbidden},
			{open, fromLoopback, []string{"X-Forwarded-For: 198.51.100.7"}, http.StatusForbidden},
			{open, fromLoopback, []string{"Authorization: Bearer guess"}, http.StatusUnauthorized},
			{tok, fromStranger, nil, http.StatusUnauthorized},
			{tok, fromStranger, []string{"Authorization: Bearer wrong"}, http.StatusUnauthorized},
			{tok, fromStranger, []string{"Authorization: Bearer s3cret"}, http.StatusOK},
			{tok, fromLoopback, nil, http.StatusOK},
		} {
			w := c.g.do("GET", "localhost:8088", path, c.remote, "", c.header...)
			if w.Code != c.want {
				t.Errorf("%s from %s %q (token %v): %d, want %d", path, c.remote, c.header, c.g.cfg.PublishToken != "", w.Code, c.want)
			}
			if body := w.Body.String(); w.Code != http.StatusOK && !strings.Contains(body, `"/status`) && !strings.Contains(body, "wrong bearer token") {
				t.Errorf("%s refusal does not say what: %s", path, w.Body)
			}
		}
	}
	w := open.do("GET", "localhost:8088", "/status", fromLoopback, "")
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/html") || !strings.Contains(w.Body.String(), `src="/status.js"`) {
		t.Errorf("/status: %q %.80s", ct, w.Body)
	}
	if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("/status CSP %q", csp)
	}
	if w := open.do("GET", "rebind.evil.example:8088", "/status.json", fromLoopback, ""); w.Code != http.StatusForbidden {
		t.Errorf("/status.json to a rebound name: %d, want 403", w.Code)
	}
}
