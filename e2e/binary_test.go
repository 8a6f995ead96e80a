package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// binary builds cmd/wspubsub once per test run.
func binary(t *testing.T) string { return binaryB(t) }

func binaryB(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "wspubsub-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "wspubsub")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/wspubsub").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestBinaryEmbeddedDefaults runs the README's first command as a real
// process — no Redis, no MongoDB — publishes with `wspubsub publish` through
// its HTTP API, and stops it with SIGTERM.
func TestBinaryEmbeddedDefaults(t *testing.T) {
	bin := binary(t)
	port := testenv.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(bin, "--listen", addr)
	cmd.Env = os.Environ() // no WSPUBSUB_* set by the harness
	var logs lockedBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	eventually(t, 10*time.Second, "gateway up", func() bool {
		r, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == 200
	})
	if !strings.Contains(logs.String(), "DEMO MODE") {
		t.Errorf("start-up log does not say it runs on the demo key:\n%s", logs.String())
	}
	c := mustDial(t, "ws://"+addr+"/websocket?"+demoKey)
	// Answered only once admitted: then a message to the key reaches it.
	c.send("ping")
	c.expect("heartbeat message")

	pub := exec.Command(bin, "publish", "--gateway", "http://"+addr, "--to", demoKey, `{"hello":"world"}`)
	if out, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("wspubsub publish: %v\n%s", err, out)
	}
	c.expect(`{"data":{"hello":"world"}}`)

	// A whole envelope, from stdin.
	pub = exec.Command(bin, "publish", "--gateway", "http://"+addr, "-")
	pub.Stdin = strings.NewReader(envelope(`{"n":2}`, demoKey))
	if out, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("wspubsub publish -: %v\n%s", err, out)
	}
	c.expect(`{"data":{"n":2}}`)

	// An invalid message is refused by the CLI with a clear error.
	out, err := exec.Command(bin, "publish", "--gateway", "http://"+addr, `{"recipients":["x"]}`).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no_data") {
		t.Fatalf("invalid message accepted: %v %s", err, out)
	}

	start := time.Now()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	c.expectClose(1012) // the default --drain-period: reconnect elsewhere
	waitGatewayExit(t, cmd, &logs)
	t.Logf("exited %v after SIGTERM", time.Since(start))
}

func TestBinaryPublishThroughRedis(t *testing.T) {
	s := newStack(t, nil, demoKey)
	c := mustDial(t, s.url(demoKey))
	waitLive(t, s, 1)
	out, err := exec.Command(binary(t), "publish", "--redis-url", s.redis.URL(), "--to", demoKey, `{"via":"redis"}`).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	c.expect(`{"data":{"via":"redis"}}`)
}

func TestBinaryHelpDocumentsEveryFlagWithEnv(t *testing.T) {
	out, _ := exec.Command(binary(t), "serve", "--help").CombinedOutput()
	for _, want := range []string{"-redis-url", "WSPUBSUB_REDIS_URL", "-mongo-uri", "WSPUBSUB_MONGO_URI", "-keys-file", "-recheck-interval"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("--help lacks %s:\n%s", want, out)
		}
	}
}

func TestHTTPEndpoints(t *testing.T) {
	s := newStack(t, nil, demoKey)
	c := mustDial(t, s.url(demoKey))
	waitLive(t, s, 1)

	get := func(path string) (int, string) {
		r, err := http.Get(s.httpURL(path))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return r.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	if code, body := get("/readyz"); code != 200 || !strings.Contains(body, `"broker":"ok"`) {
		t.Fatalf("/readyz %d %s", code, body)
	}
	if code, _ := get(s.cfg.Path + "?" + demoKey); code != 400 {
		t.Fatalf("plain GET on the client path: %d, want 400", code)
	}

	post := func(body string) (int, map[string]string) {
		r, err := http.Post(s.httpURL("/publish"), "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		var m map[string]string
		_ = json.NewDecoder(r.Body).Decode(&m)
		return r.StatusCode, m
	}
	if code, m := post(`{"recipients":["a"],"data":`); code != 400 || m["error"] != "invalid_json" {
		t.Fatalf("invalid publish: %d %v", code, m)
	}
	if code, m := post(envelope(`{"api":1}`, demoKey)); code != 202 {
		t.Fatalf("publish: %d %v", code, m)
	}
	c.expect(`{"data":{"api":1}}`)

	_, body := get("/metrics")
	for _, want := range []string{
		`wspubsub_connections{transport="websocket"} 1`,
		`wspubsub_connects_total{transport="websocket"} 1`,
		`wspubsub_messages_in_total 1`,
		`wspubsub_deliveries_total 1`,
		`wspubsub_drops_total{reason="invalid_json"} 0`,
		`wspubsub_rejections_total{reason="unauthorized"} 0`,
		`wspubsub_broker_reconnects_total 0`,
		`wspubsub_broker_ready 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
