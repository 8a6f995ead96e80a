package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var (
	jqOnce sync.Once
	jqPath string
	jqErr  error
)

// jquery returns jQuery 1.9.1 (the 2014 pages' version): $WSPUBSUB_JQUERY,
// or fetched once from the npm registry.
func jquery(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("WSPUBSUB_JQUERY"); p != "" {
		return p
	}
	jqOnce.Do(func() {
		dir, err := os.MkdirTemp("", "wspubsub-jquery")
		if err != nil {
			jqErr = err
			return
		}
		out, err := exec.Command("npm", "pack", "jquery@1.9.1", "--pack-destination", dir).CombinedOutput()
		if err == nil {
			out, err = exec.Command("tar", "xzf", filepath.Join(dir, "jquery-1.9.1.tgz"), "-C", dir).CombinedOutput()
		}
		if err != nil {
			jqErr = fmt.Errorf("fetching jquery@1.9.1: %v\n%s", err, out)
		}
		jqPath = filepath.Join(dir, "package", "jquery.js")
	})
	if jqErr != nil {
		if os.Getenv("WSPUBSUB_REQUIRE_SERVICES") == "1" {
			t.Fatal(jqErr)
		}
		t.Skip(jqErr)
	}
	return jqPath
}

// pageServer serves the 2014-style page from its own origin; the page is
// filled in once the gateway's address is known.
type pageServer struct {
	*httptest.Server
	mu   sync.Mutex
	page func(w http.ResponseWriter, r *http.Request)
}

func newPageServer(t *testing.T) *pageServer {
	p := &pageServer{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		h := p.page
		p.mu.Unlock()
		if h == nil {
			http.NotFound(w, r)
			return
		}
		h(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

// serve fills in the 2014-style page.
func (p *pageServer) serve(t *testing.T, gateway, key, bulletSrc string, options map[string]bool) {
	t.Helper()
	tmpl, err := os.ReadFile("testdata/bullet-page/index.html")
	if err != nil {
		t.Fatal(err)
	}
	stand, _ := os.ReadFile("testdata/bullet-page/bullet-2014.js")
	jq, err := os.ReadFile(jquery(t))
	if err != nil {
		t.Fatal(err)
	}
	opts, _ := json.Marshal(options)
	page := strings.NewReplacer("GATEWAY", gateway, "KEY", key, "OPTIONS", string(opts), "BULLET_SRC", bulletSrc).Replace(string(tmpl))
	p.mu.Lock()
	defer p.mu.Unlock()
	p.page = func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/jquery.js":
			w.Header().Set("Content-Type", "text/javascript")
			_, _ = w.Write(jq)
		case "/bullet.js":
			w.Header().Set("Content-Type", "text/javascript")
			_, _ = w.Write(stand)
		default:
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = w.Write([]byte(page))
		}
	}
}

func TestBullet2014PageOverEachTransport(t *testing.T) {
	cases := []struct {
		transport string
		options   map[string]bool
	}{
		{"websocket", map[string]bool{"disableEventSource": true, "disableXHRPolling": true}},
		{"eventsource", map[string]bool{"disableWebSocket": true, "disableXHRPolling": true}},
		{"polling", map[string]bool{"disableWebSocket": true, "disableEventSource": true}},
	}
	for _, script := range []string{"bullet-2014", "wspubsub.script.js"} {
		for _, c := range cases {
			t.Run(script+"/"+c.transport, func(t *testing.T) {
				key := "b-" + c.transport
				// The page's origin is only known once its server runs; the
				// gateway admits it through --allowed-origins.
				srv := newPageServer(t)
				s := newStack(t, []string{"--allowed-origins", srv.URL, "--poll-timeout", "5s"}, key)
				src := "/bullet.js"
				if script != "bullet-2014" {
					src = "http://" + s.gw.Addr().String() + "/wspubsub.script.js"
				}
				srv.serve(t, s.gw.Addr().String(), key, src, c.options)
				ctx := browser(t)
				run(t, ctx, 20*time.Second, "2014 page opens",
					chromedp.Navigate(srv.URL+"/"),
					waitText("#state", "open"))
				waitLive(t, s, 1)
				if got := s.gw.Hub().Sessions(key)[0].Transport; got != c.transport {
					t.Fatalf("connected over %s, want %s", got, c.transport)
				}
				s.publish(envelope(`{"entry":{"id":"123","comments":0,"tags":0}}`, key))
				run(t, ctx, 10*time.Second, "message shown",
					waitText("#log", `{"data":{"entry":{"id":"123","comments":0,"tags":0}}}`))
				run(t, ctx, 10*time.Second, "ping answered",
					chromedp.Evaluate[chromedp.Void](`sendPing()`), waitText("#log", "heartbeat message"))
				// Polling is one logical connection across its many requests.
				time.Sleep(500 * time.Millisecond)
				if got := testutil.ToFloat64(s.gw.Metrics().Connects.WithLabelValues(c.transport)); got != 1 {
					t.Fatalf("connects{%s} = %v, want 1", c.transport, got)
				}
				screenshot(t, ctx, "bullet-"+strings.TrimSuffix(script, ".script.js")+"-"+c.transport+".png")
			})
		}
	}
}
