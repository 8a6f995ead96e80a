package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/presence"
)

type presenceAnswer struct {
	Keys map[string]keyPresence `json:"keys"`
}

func decode[T any](t *testing.T, body string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("not JSON: %v: %s", err, body)
	}
	return v
}

func TestPresenceEndpoints(t *testing.T) {
	tg := newTestGateway(t, keystore.NewMemory("k1"), "--presence", "--node-id", "gw-1", "--advertise-addr", "10.0.0.7:8088")
	tg.presence.Join("k1", "websocket")
	tg.presence.Join("k1", "polling")

	w := tg.do("GET", "127.0.0.1:8088", "/presence?key=k1&key=k2&key=k1", fromLoopback, "")
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("GET /presence: %d %s", w.Code, w.Body)
	}
	got := decode[presenceAnswer](t, w.Body.String())
	want := presenceAnswer{Keys: map[string]keyPresence{
		"k1": {Online: true, Conns: 2, Nodes: []presence.Entry{{Node: "gw-1", Conns: 2, Transports: []string{"polling", "websocket"}}}},
		"k2": {Online: false, Conns: 0, Nodes: []presence.Entry{}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("GET /presence = %+v, want %+v", got, want)
	}
	for _, body := range []string{`["k1","k2"]`, `{"keys":["k1","k2"]}`} {
		w = tg.do("POST", "127.0.0.1:8088", "/presence", fromLoopback, body, ctJSON)
		if w.Code != http.StatusOK {
			t.Fatalf("POST /presence %s: %d %s", body, w.Code, w.Body)
		}
		if got := decode[presenceAnswer](t, w.Body.String()); !reflect.DeepEqual(got, want) {
			t.Fatalf("POST /presence %s = %+v, want %+v", body, got, want)
		}
	}

	many := make([]string, MaxPresenceKeys+1)
	for i := range many {
		many[i] = fmt.Sprint("k", i)
	}
	manyJSON, _ := json.Marshal(many)
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/presence", ""},
		{"GET", "/presence?key=", ""},
		{"POST", "/presence", `"k1"`},
		{"POST", "/presence", string(manyJSON)},
		{"GET", "/presence?key=" + strings.Repeat("x", 1025), ""},
	} {
		if w := tg.do(c.method, "127.0.0.1:8088", c.path, fromLoopback, c.body, ctJSON); w.Code != http.StatusBadRequest {
			t.Errorf("%s %.40s %.40s: %d, want 400", c.method, c.path, c.body, w.Code)
		}
	}
	if w := tg.do("POST", "127.0.0.1:8088", "/presence", fromLoopback, `["k1"]`); w.Code != http.StatusBadRequest {
		t.Errorf("POST without Content-Type: %d, want 400", w.Code)
	}

	// The registry counts the hub's sessions (none here: the Joins above
	// went to presence directly).
	w = tg.do("GET", "127.0.0.1:8088", "/nodes", fromLoopback, "")
	nodes := decode[struct{ Nodes []presence.Node }](t, w.Body.String()).Nodes
	if w.Code != http.StatusOK || len(nodes) != 1 || nodes[0].ID != "gw-1" || nodes[0].Addr != "10.0.0.7:8088" || nodes[0].Conns != 0 {
		t.Fatalf("GET /nodes: %d %s", w.Code, w.Body)
	}
}

// TestPresenceCallers: /presence and /nodes admit whom /publish admits.
func TestPresenceCallers(t *testing.T) {
	open := newTestGateway(t, keystore.NewMemory(), "--presence")
	tok := newTestGateway(t, keystore.NewMemory(), "--presence", "--publish-token", "s3cret")
	for _, path := range []string{"/presence?key=k", "/nodes"} {
		for _, c := range []struct {
			g      *testGateway
			remote string
			want   int
			header []string
		}{
			{open, fromLoopback, 200, nil},
			{open, fromStranger, 403, nil},
			{open, fromLoopback, 403, []string{"X-Forwarded-For: 203.0.113.9"}},
			{open, fromLoopback, 403, []string{"Origin: https://evil.example"}},
			{open, fromLoopback, 401, []string{"Authorization: Bearer guess"}},
			{tok, fromLoopback, 401, nil},
			{tok, fromStranger, 200, []string{"Authorization: Bearer s3cret"}},
			{tok, fromStranger, 401, []string{"Authorization: Bearer wrong"}},
		} {
			if w := c.g.do("GET", "127.0.0.1:8088", path, c.remote, "", c.header...); w.Code != c.want {
				t.Errorf("GET %s from %s %q: %d, want %d", path, c.remote, c.header, w.Code, c.want)
			}
		}
		if w := open.do("GET", "rebind.example:8088", path, fromLoopback, ""); w.Code != 403 {
			t.Errorf("GET %s under a rebound name: %d, want 403", path, w.Code)
		}
	}
}

// down is presence whose store does not answer.
type down struct{ presence.Presence }

func (down) Lookup(context.Context, []string) (map[string][]presence.Entry, error) {
	return nil, fmt.Errorf("%w: dial tcp: connection refused", presence.ErrUnavailable)
}
func (down) Nodes(context.Context) ([]presence.Node, error) {
	return nil, errors.New("dial tcp: connection refused")
}

func TestPresenceStoreDown(t *testing.T) {
	tg := newTestGateway(t, keystore.NewMemory(), "--presence")
	tg.presence = down{tg.presence}
	for _, path := range []string{"/presence?key=k", "/nodes"} {
		w := tg.do("GET", "127.0.0.1:8088", path, fromLoopback, "")
		if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), `"error":"presence unavailable"`) || w.Header().Get("Retry-After") == "" {
			t.Errorf("GET %s: %d %s %v, want 503 JSON with Retry-After", path, w.Code, w.Body, w.Header())
		}
	}
	if n := testutil.ToFloat64(tg.metrics.PresenceReads.WithLabelValues(metrics.PresenceError)); n != 2 {
		t.Errorf("wspubsub_presence_reads_total{outcome=error} = %v, want 2", n)
	}
}
