package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// startGatewayBinary runs the gateway binary with args on a free loopback port
// (never 8088, the default the demo page's hint leaves out) and returns its
// address and its stderr; it is killed at the end of the test unless
// stopped first.
func startGatewayBinary(t *testing.T, args ...string) (string, *lockedBuffer, *exec.Cmd) {
	t.Helper()
	port := testenv.FreePort(t)
	for port == 8088 {
		port = testenv.FreePort(t)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(binary(t), append([]string{"--listen", addr}, args...)...)
	cmd.Env = os.Environ()
	logs := &lockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	eventually(t, 20*time.Second, "gateway answers /healthz", func() bool {
		code, _ := httpGet("http://" + addr + "/healthz")
		return code == http.StatusOK
	})
	return addr, logs, cmd
}

// stopGatewayBinary sends SIGTERM and waits for the exit.
func stopGatewayBinary(t *testing.T, cmd *exec.Cmd, logs *lockedBuffer) {
	t.Helper()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	waitGatewayExit(t, cmd, logs)
}

// waitGatewayExit waits (30 s at most) for a signalled gateway binary to
// exit cleanly.
func waitGatewayExit(t *testing.T, cmd *exec.Cmd, logs *lockedBuffer) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit within 30s of SIGTERM\n%s", logs.String())
	}
}

func httpGet(url string) (int, string) {
	r, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	return r.StatusCode, string(b)
}

// TestBinaryRedisUnreachableLogsJSONOnly: with --log-format json and a
// Redis that refuses, every stderr line is JSON (go-redis's own lines
// included, routed through slog), the gateway says "cannot reach Redis at
// host:port" and not "subscription lost", and the password is never shown.
func TestBinaryRedisUnreachableLogsJSONOnly(t *testing.T) {
	closed := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)) // nothing listens there
	addr, logs, cmd := startGatewayBinary(t, "--redis-url", "redis://:pa55word@"+closed, "--log-format", "json", "--drain-period", "0")
	want := "cannot reach Redis at " + closed + "; retrying"
	eventually(t, 30*time.Second, "the cannot-reach line and a go-redis line", func() bool {
		s := logs.String()
		return strings.Contains(s, want) && strings.Contains(s, `"source":"go-redis"`)
	})
	if code, _ := httpGet("http://" + addr + "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz %d with Redis unreachable, want 503", code)
	}
	stopGatewayBinary(t, cmd, logs)
	out := logs.String()
	for i, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Errorf("stderr line %d is not JSON: %q", i+1, line)
		}
	}
	if !strings.Contains(out, want) { // how often: internal/broker's tests
		t.Errorf("no cannot-reach line:\n%s", out)
	}
	for _, bad := range []string{"subscription lost", "pa55word", "pool.go"} {
		if strings.Contains(out, bad) {
			t.Errorf("stderr holds %q:\n%s", bad, out)
		}
	}
}

// TestBinaryKeyStoreUnreachableAtStart: a --mongo-uri at a closed port
// gets one clear warning at start-up, the gateway serves /healthz, /readyz
// gives a short reason (no driver topology), and once MongoDB comes up the
// gateway says so, once. With credentials (which the test server refuses),
// they are never shown and the new reason is said once.
func TestBinaryKeyStoreUnreachableAtStart(t *testing.T) {
	t.Run("comes-up", testKeyStoreComesUp)
	t.Run("refuses-credentials", testKeyStoreRefusesCredentials)
}

func testKeyStoreComesUp(t *testing.T) {
	mongo := testenv.Mongo(t)
	mongo.Stop()
	uri := "mongodb://" + mongo.Addr() + "/"
	addr, logs, cmd := startGatewayBinary(t, "--mongo-uri", uri, "--key-check-timeout", "500ms", "--drain-period", "0")
	const warning = keyStoreWarning
	eventually(t, 30*time.Second, "the start-up warning", func() bool { return strings.Contains(logs.String(), warning) })
	if code, _ := httpGet("http://" + addr + "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d", code)
	}
	code, body := httpGet("http://" + addr + "/readyz") // a local caller: it gets the details
	if code != http.StatusServiceUnavailable || !strings.Contains(body, `"store":"key store unreachable: connection refused"`) ||
		strings.Contains(body, "topology") {
		t.Fatalf("/readyz %d %s", code, body)
	}
	mustDial(t, "ws://"+addr+"/websocket?some-key").expectClose(1013) // try again later

	mongo.Start()
	eventually(t, 60*time.Second, "the reachable line", func() bool { return strings.Contains(logs.String(), "key store reachable") })
	stopGatewayBinary(t, cmd, logs)
	out := logs.String()
	if n := strings.Count(out, warning); n != 1 || strings.Count(out, "key store reachable") != 1 || !strings.Contains(out, mongo.Addr()) {
		t.Errorf("warning logged %d times, want once, then reachable once, both naming %s:\n%s", n, mongo.Addr(), out)
	}
}

const keyStoreWarning = "key store unreachable at start-up; the gateway keeps starting and clients are refused with 1013"

func testKeyStoreRefusesCredentials(t *testing.T) {
	mongo := testenv.Mongo(t)
	mongo.Stop()
	uri := "mongodb://wsuser:m0ngopass@" + mongo.Addr() + "/"
	addr, logs, cmd := startGatewayBinary(t, "--mongo-uri", uri, "--key-check-timeout", "500ms", "--drain-period", "0")
	eventually(t, 30*time.Second, "the start-up warning", func() bool { return strings.Contains(logs.String(), keyStoreWarning) })
	mongo.Start()
	const refused = "key store unavailable: authentication failed"
	eventually(t, 60*time.Second, "the new reason", func() bool { return strings.Contains(logs.String(), refused) })
	if code, body := httpGet("http://" + addr + "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, refused) {
		t.Errorf("/readyz %d %s", code, body)
	}
	stopGatewayBinary(t, cmd, logs)
	out := logs.String()
	if strings.Contains(out, "m0ngopass") || strings.Contains(out, "wsuser") || !strings.Contains(out, "mongodb://***@"+mongo.Addr()) {
		t.Errorf("the log shows the credentials, or not where the store is:\n%s", out)
	}
}

// TestBinaryFaviconAndDemoMode: /favicon.ico is served (cacheable), and
// the demo page learns which broker carries its publish box's messages.
func TestBinaryFaviconAndDemoMode(t *testing.T) {
	addr, _, _ := startGatewayBinary(t)
	r, err := http.Get("http://" + addr + "/favicon.ico")
	if err != nil {
		t.Fatal(err)
	}
	icon, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || r.Header.Get("Content-Type") != "image/x-icon" || !strings.Contains(r.Header.Get("Cache-Control"), "max-age=") ||
		len(icon) < 22 || string(icon[:4]) != "\x00\x00\x01\x00" {
		t.Fatalf("/favicon.ico: %d %v, %d bytes", r.StatusCode, r.Header, len(icon))
	}
	for _, c := range []struct {
		args []string
		want string
	}{{nil, `"broker":"memory"`}, {[]string{"--redis-url", testenv.Redis(t).URL()}, `"broker":"redis"`}} {
		addr, _, _ := startGatewayBinary(t, c.args...)
		if code, body := httpGet("http://" + addr + "/demo/config.json"); code != 200 || !strings.Contains(body, c.want) {
			t.Errorf("%v: /demo/config.json %d %s, want %s", c.args, code, body, c.want)
		}
	}
}

// TestBrowserDemoPageShellHint: on a port other than 8088 the demo page's
// "From a shell" hint names the gateway and quotes a message holding a
// quote so that the shell passes it intact (the test runs it, and the
// message arrives); the publish box names the broker in use.
func TestBrowserDemoPageShellHint(t *testing.T) {
	bin := binary(t)
	for _, c := range []struct {
		name, mode string
		args       []string
	}{
		{"in-process", "embedded defaults", nil},
		{"redis", "--redis-url", []string{"--redis-url", testenv.Redis(t).URL()}},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr, _, _ := startGatewayBinary(t, c.args...)
			ctx := browser(t)
			run(t, ctx, 30*time.Second, "demo page connects",
				chromedp.Navigate("http://"+addr+"/"),
				chromedp.WaitVisible(chromedp.CSS(`#state[data-state="open"]`)),
				waitText("#publish-mode", c.mode))
			msg := fmt.Sprintf(`{"note": "it's %s"}`, c.name)
			hint, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`(() => {
				const box = document.getElementById("publish-data");
				box.value = %q;
				box.dispatchEvent(new Event("input"));
				return document.getElementById("publish-cli").textContent;
			})()`, msg)))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(hint, "--gateway http://"+addr+" ") || !strings.Contains(hint, `'\''`) {
				t.Fatalf("hint %q lacks --gateway http://%s or the quote's escape", hint, addr)
			}
			const prefix = "go run ./cmd/wspubsub "
			if !strings.HasPrefix(hint, prefix) {
				t.Fatalf("hint %q", hint)
			}
			if out, err := exec.Command("sh", "-c", bin+" "+strings.TrimPrefix(hint, prefix)).CombinedOutput(); err != nil {
				t.Fatalf("running the hint: %v\n%s", err, out)
			}
			run(t, ctx, 20*time.Second, "the hint's message arrives", waitText("#messages", `"note": "it's `+c.name+`"`))
			screenshot(t, ctx, "demo-hint-"+c.name+".png")
		})
	}
}
