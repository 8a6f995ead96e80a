package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// artifactDir is where browser tests save screenshots ($WSPUBSUB_ARTIFACTS,
// default artifacts/ at the repository root).
func artifactDir(t *testing.T) string {
	dir := os.Getenv("WSPUBSUB_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser starts a headless Chromium with a fresh profile (and extra
// flags, if any).
func browser(t *testing.T, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	// $CHROMIUM names another Chromium-based browser (Google Chrome: on
	// Ubuntu the chromium package is a snap, which these tests cannot run).
	path := os.Getenv("CHROMIUM")
	var err error
	if path == "" {
		path, err = exec.LookPath("chromium")
	}
	if err != nil {
		if os.Getenv("WSPUBSUB_REQUIRE_SERVICES") == "1" {
			t.Fatal("chromium is required (WSPUBSUB_REQUIRE_SERVICES=1; CHROMIUM=/path/to/browser to use another)")
		}
		t.Skip("chromium not installed; scripts/test.sh installs it")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1100, 900),
	}
	opts = append(opts, extra...)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelC(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// run runs browser actions with a deadline.
func run(t *testing.T, ctx context.Context, d time.Duration, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, max(d, patience))
	defer cancel()
	if err := chromedp.Do(tctx, actions...); err != nil {
		t.Fatalf("%s: %v (page: %s)", what, err, pageText(ctx))
	}
}

// pageText reads what the page shows, for failure messages.
func pageText(ctx context.Context) string {
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, _ := chromedp.Run(sctx, chromedp.Evaluate[string](`document.body ? document.body.innerText.slice(0, 600) : ""`))
	return s
}

func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, patience)
	defer cancel()
	png, err := chromedp.Run(tctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(artifactDir(t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", path)
}

// waitText waits until the element's text contains want.
func waitText(sel, want string) chromedp.Action[chromedp.Void] {
	poll := chromedp.Poll[bool](fmt.Sprintf(`(document.querySelector(%q)?.textContent || "").includes(%q)`, sel, want),
		chromedp.WithPollingInterval(50*time.Millisecond))
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := poll(ctx, t)
		return chromedp.Void{}, err
	}
}

// waitAtLeast waits until the element shows a number of at least n. (A
// page may need more than one attempt to reconnect to a restarting
// gateway, and the counter can pass n between two polls.)
func waitAtLeast(sel string, n int) chromedp.Action[chromedp.Void] {
	poll := chromedp.Poll[bool](fmt.Sprintf(`parseInt(document.querySelector(%q)?.textContent || "0", 10) >= %d`, sel, n),
		chromedp.WithPollingInterval(50*time.Millisecond))
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := poll(ctx, t)
		return chromedp.Void{}, err
	}
}

func TestBrowserDemoPageOverEachTransport(t *testing.T) {
	for _, transport := range []string{"websocket", "eventsource", "polling"} {
		t.Run(transport, func(t *testing.T) {
			key := "browser-" + transport
			s := newStack(t, []string{"--poll-timeout", "5s"}, key)
			ctx := browser(t)
			page := s.httpURL("/?key=" + key + "&transports=" + transport)
			run(t, ctx, 20*time.Second, "page connects",
				chromedp.Navigate(page),
				chromedp.WaitVisible(chromedp.CSS(`#state[data-state="open"]`)),
				waitText("#transport", transport))

			s.publish(envelope(`{"hello":"`+transport+`","n":1}`, key))
			run(t, ctx, 10*time.Second, "message appears", waitText("#messages", `"hello": "`+transport+`"`))

			run(t, ctx, 10*time.Second, "ping answered",
				chromedp.Click(chromedp.CSS("#ping")), waitText("#messages", "heartbeat message"))
			screenshot(t, ctx, "demo-"+transport+".png")

			s.restartGateway()
			run(t, ctx, 30*time.Second, "page reconnects by itself after a gateway restart",
				waitAtLeast("#reconnects", 1),
				chromedp.WaitVisible(chromedp.CSS(`#state[data-state="open"]`)),
				waitText("#transport", transport))
			waitLive(t, s, 1)
			s.publish(envelope(`{"after":"restart","n":2}`, key))
			run(t, ctx, 10*time.Second, "message after restart", waitText("#messages", `"after": "restart"`))
			screenshot(t, ctx, "demo-"+transport+"-after-restart.png")
		})
	}
}

func TestBrowserUnknownKeyShowsUnauthorizedAndDoesNotRetry(t *testing.T) {
	for _, transport := range []string{"websocket", "eventsource", "polling"} {
		t.Run(transport, func(t *testing.T) {
			s := newStack(t, nil)
			ctx := browser(t)
			run(t, ctx, 20*time.Second, "unauthorized shown",
				chromedp.Navigate(s.httpURL("/?key=not-a-key&transports="+transport)),
				chromedp.WaitVisible(chromedp.CSS(`#state[data-state="unauthorized"]`)),
				waitText("#error", "Unauthorized"))
			time.Sleep(2 * time.Second)
			if got := testutil.ToFloat64(s.gw.Metrics().Rejections.WithLabelValues("unauthorized")); got != 1 {
				t.Fatalf("rejections = %v after 2s, want exactly 1 (no retry)", got)
			}
			screenshot(t, ctx, "demo-unauthorized-"+transport+".png")
		})
	}
}

func TestBrowserDemoPageOnEmbeddedDefaultsAndPhoneScreen(t *testing.T) {
	bin := binary(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cmd := exec.Command(bin, "--listen", addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	waitReadyAt(t, addr) // a browser that starts first must not find it closed
	ctx := browser(t)
	run(t, ctx, 20*time.Second, "demo page connects with the prefilled demo key",
		chromedp.Navigate("http://"+addr+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#state[data-state="open"]`)),
		chromedp.WaitVisible(chromedp.CSS("#publish")),
		chromedp.Click(chromedp.CSS("#publish")),
		waitText("#messages", `"hello": "world"`),
		waitText("#publish-result", "published"))
	screenshot(t, ctx, "demo-embedded-defaults.png")
	key, err := chromedp.Run(ctx, chromedp.Value(chromedp.CSS("#key")))
	if err != nil || key != demoKey {
		t.Fatalf("prefilled key %q", key)
	}
	run(t, ctx, 10*time.Second, "phone-sized screen", chromedp.EmulateViewport(390, 844))
	screenshot(t, ctx, "demo-phone.png")
}
