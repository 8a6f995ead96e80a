package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/gateway"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

// statusShot saves a full-page screenshot into the test's temp dir and,
// when $WSPUBSUB_SCREENSHOTS names a directory, there too (that is how
// docs/status-*.png are made).
func statusShot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(tctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	dirs := []string{dir}
	if d := os.Getenv("WSPUBSUB_SCREENSHOTS"); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(d, name)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s", path)
	}
}

// waitJS waits until the JavaScript expression is true.
func waitJS(expr string) chromedp.Action[chromedp.Void] {
	poll := chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond))
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := poll(ctx, t)
		return chromedp.Void{}, err
	}
}

func textIs(sel, want string) chromedp.Action[chromedp.Void] {
	return waitJS(fmt.Sprintf(`(document.querySelector(%q)?.textContent || "") === %q`, sel, want))
}

// TestBrowserStatusPage opens /status in headless Chromium, connects
// clients over two transports, publishes until the page shows a delivery
// rate, and checks the page at laptop and phone size.
func TestBrowserStatusPage(t *testing.T) {
	keys := []string{"status-k1", "status-k2", "status-k3"}
	s := newStack(t, nil, keys...)
	ctx := browser(t)
	run(t, ctx, 20*time.Second, "status page loads and shows the backends",
		chromedp.Navigate(s.httpURL("/status")),
		waitJS(`document.querySelector("#live")?.dataset.state === "live"`),
		waitText("#broker-kind", "Redis · ready"),
		waitText("#store-kind", "MongoDB · ready"),
		waitText("#node-id", s.cfg.NodeID),
		textIs("#conns-total", "0"))

	for _, k := range keys {
		c := mustDial(t, s.url(k))
		go func() { // read what arrives: the test must not rest on socket buffers
			for {
				if _, err := c.next(time.Minute); err != nil {
					return
				}
			}
		}()
	}
	sse := openSSE(t, s.httpURL(s.cfg.Path+"?"+keys[0]), nil)
	go func() { _, _ = io.Copy(io.Discard, sse.resp.Body) }()
	waitLive(t, s, 4)

	// One message the gateway drops, and one client that leaves, so the
	// page has a drop and a disconnect reason to show.
	s.publish(`{"recipients":["status-k1"],"data":`)
	gone := mustDial(t, s.url(keys[1]))
	waitLive(t, s, 5)
	gone.close()
	waitLive(t, s, 4)

	// Publish until told to stop: the rate shown is the last second's.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var gap atomic.Int64 // between two publishes
	gap.Store(int64(20 * time.Millisecond))
	wg.Go(func() {
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(gap.Load())):
			}
			_ = s.rdb.Publish(context.Background(), s.cfg.Channel, envelope(`{"n":`+strconv.Itoa(n)+`}`, keys...)).Err()
		}
	})
	defer func() { close(stop); wg.Wait() }()

	run(t, ctx, 30*time.Second, "page shows the connections by transport and a delivery rate",
		textIs("#conns-total", "4"),
		textIs("#conns-websocket", "3"),
		textIs("#conns-eventsource", "1"),
		waitJS(`parseFloat(document.querySelector("#rate-out")?.textContent || "0") > 0`),
		waitJS(`parseFloat(document.querySelector("#rate-in")?.textContent || "0") > 0`),
		waitText("#drops", "invalid_json"),
		waitText("#disconnects", "client"))

	// A second gateway on the same Redis: the page lists the nodes.
	secondGateway(t, s, "status-b")
	run(t, ctx, 30*time.Second, "page lists both nodes",
		waitJS(`!document.querySelector("#nodes-card").hidden`),
		waitText("#nodes-count", "2 live"),
		waitText("#nodes", "status-b"),
		waitText("#nodes", s.cfg.NodeID))

	if os.Getenv("WSPUBSUB_SCREENSHOTS") != "" {
		docsHistory(t, s, keys, &gap)
	}

	dir := t.TempDir()
	run(t, ctx, 10*time.Second, "laptop size", chromedp.EmulateViewport(1280, 800),
		waitJS(`document.querySelector("#chart-traffic").width >= 400`))
	statusShot(t, ctx, dir, "status-laptop.png")

	run(t, ctx, 10*time.Second, "phone size", chromedp.EmulateViewport(390, 844),
		waitJS(`document.querySelector("#chart-traffic").width <= 390 * devicePixelRatio`))
	fits, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth <= window.innerWidth`))
	if err != nil || !fits {
		w, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.documentElement.scrollWidth + " > " + window.innerWidth`))
		t.Errorf("horizontal overflow at 390 px: %s (%v)", w, err)
	}
	statusShot(t, ctx, dir, "status-phone.png")

	// A hidden tab stops polling, and catches up at once when shown again.
	run(t, ctx, 10*time.Second, "count the page's requests", chromedp.Evaluate[chromedp.Void](`
		window.statusPolls = 0;
		const realFetch = window.fetch;
		window.fetch = (...args) => { window.statusPolls++; return realFetch(...args); };`))
	run(t, ctx, 10*time.Second, "page polls", waitJS(`window.statusPolls >= 1`))
	run(t, ctx, 10*time.Second, "tab hidden: paused", chromedp.Evaluate[chromedp.Void](`
		Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
		document.dispatchEvent(new Event("visibilitychange"));`),
		waitJS(`document.querySelector("#live").dataset.state === "paused"`))
	before, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.statusPolls`))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // three polls' worth: none may be sent
	if after, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.statusPolls`)); err != nil || after != before {
		t.Errorf("hidden tab polled: %d requests before, %d after (%v)", before, after, err)
	}
	run(t, ctx, 10*time.Second, "tab shown again: live at once", chromedp.Evaluate[chromedp.Void](`
		Object.defineProperty(document, "hidden", { configurable: true, get: () => false });
		document.dispatchEvent(new Event("visibilitychange"));`),
		waitJS(fmt.Sprintf(`window.statusPolls > %d && document.querySelector("#live").dataset.state === "live"`, before)))

	// The JSON behind it, as a tool would read it.
	resp, err := http.Get(s.httpURL("/status.json"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/status.json: %d", resp.StatusCode)
	}
}

// docsHistory gives the pictures of docs/ a minute and a half of history
// (only with $WSPUBSUB_SCREENSHOTS; nothing here is asserted): clients
// come and go and the publish rate changes.
func docsHistory(t *testing.T, s *stack, keys []string, gap *atomic.Int64) {
	var extra []*client
	for i, ms := range []int{10, 5, 8, 15, 4, 6, 12, 30, 7} {
		gap.Store(int64(time.Duration(ms) * time.Millisecond))
		if i%3 == 2 && len(extra) > 0 {
			extra[0].close()
			extra = extra[1:]
		} else {
			c := mustDial(t, s.url(keys[i%len(keys)]))
			go func() {
				for {
					if _, err := c.next(time.Minute); err != nil {
						return
					}
				}
			}()
			extra = append(extra, c)
		}
		time.Sleep(10 * time.Second)
	}
}

// secondGateway starts another gateway on s's Redis and MongoDB, named id,
// until the test ends.
func secondGateway(t *testing.T, s *stack, id string) {
	t.Helper()
	cfg, err := config.ParseServe([]string{"--listen", "127.0.0.1:0", "--redis-url", s.redis.URL(),
		"--mongo-uri", s.mongo.URL(), "--node-id", id, "--shutdown-timeout", "5s"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(cfg, gateway.Options{Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(patience):
			t.Errorf("gateway %s did not stop within %v", id, patience)
		}
	})
	waitReadyAt(t, gw.Addr().String())
}
