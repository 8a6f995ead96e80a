package e2e

// Support for the chaos tests (chaos_test.go): gateway processes that can
// be SIGKILLed and restarted on their port, a publisher that retries with
// the same idempotency key until acknowledged, and resuming clients over
// the three transports that drop their connection at random moments and
// resume with the last id they received.

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"net"
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

// chaosGateway is one gateway process on a fixed port: Kill is SIGKILL,
// Start (re)starts it on the same port.
type chaosGateway struct {
	t      *testing.T
	name   string
	addr   string
	args   []string
	logs   *lockedBuffer
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// newChaosGateway starts the gateway binary on a free port with a key file
// holding keys and args, and waits until it is ready.
func newChaosGateway(t *testing.T, name string, keys []string, args ...string) *chaosGateway {
	t.Helper()
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &chaosGateway{t: t, name: name, logs: &lockedBuffer{}}
	t.Cleanup(func() {
		g.Kill()
		if t.Failed() {
			t.Logf("%s log (last 8 KiB):\n%s", g.name, chaosTail(g.logs.String(), 8<<10))
		}
	})
	// The free port can be taken by another process before the gateway
	// binds it (tests run beside others): then another one. Restarts keep
	// the port, which the gateway held until then.
	for attempt := 1; ; attempt++ {
		g.addr = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		// Info: the subscription's losses and restorations and the
		// resyncs, which the diagnostics of a lost message show.
		g.args = append([]string{"--listen", g.addr, "--keys-file", keyFile, "--log-level", "info"}, args...)
		err := g.start()
		if err == nil {
			break
		}
		if attempt == 3 || !strings.Contains(g.logs.String(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("%s: %s taken meanwhile; on another port", g.name, g.addr)
		g.logs = &lockedBuffer{}
	}
	g.waitReady(20 * time.Second)
	return g
}

func chaosTail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// Start starts the process (if not running) and waits until it answers
// /healthz; only call it from the test's goroutine.
func (g *chaosGateway) Start() {
	g.t.Helper()
	if err := g.start(); err != nil {
		g.t.Fatal(err)
	}
}

// start is Start, returning what went wrong.
func (g *chaosGateway) start() error {
	g.mu.Lock()
	if g.cmd != nil {
		g.mu.Unlock()
		return nil
	}
	cmd := exec.Command(binary(g.t), g.args...)
	cmd.Env = os.Environ()
	cmd.Stdout, cmd.Stderr = g.logs, g.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		g.mu.Unlock()
		return fmt.Errorf("starting %s: %w", g.name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	g.cmd, g.exited = cmd, exited
	g.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for !g.get("/healthz") {
		select {
		case <-exited:
			g.mu.Lock()
			g.cmd = nil
			g.mu.Unlock()
			return fmt.Errorf("%s exited at start: %v\n%s", g.name, cmd.ProcessState, chaosTail(g.logs.String(), 4<<10))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy within 20s", g.name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// Kill SIGKILLs the process and waits for it to be gone.
func (g *chaosGateway) Kill() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil {
		return
	}
	_ = g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.exited
	g.cmd = nil
}

// running reports whether the process is alive (false once it exited by
// itself, which no gateway should do during the test).
func (g *chaosGateway) running() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil {
		return false
	}
	select {
	case <-g.exited:
		return false
	default:
		return true
	}
}

func (g *chaosGateway) get(path string) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + g.addr + path)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// waitReady waits until /readyz answers 200 (broker and store reachable).
func (g *chaosGateway) waitReady(d time.Duration) {
	g.t.Helper()
	deadline := time.Now().Add(d)
	for !g.get("/readyz") {
		if time.Now().After(deadline) {
			g.t.Fatalf("%s not ready within %v", g.name, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// events returns the lines of the gateway's log about its (re)starts, its
// subscription and resyncs, and the first maxFailed failed resumes, each
// with its time since t0.
func (g *chaosGateway) events(t0 time.Time, maxFailed int) []string {
	var out []string
	failed := 0
	for line := range strings.SplitSeq(g.logs.String(), "\n") {
		if strings.Contains(line, "resume failed") {
			if failed++; failed > maxFailed {
				continue
			}
		} else if !strings.Contains(line, "subscription") && !strings.Contains(line, "caught up") &&
			!strings.Contains(line, "listening") {
			continue
		}
		if ts, rest, ok := strings.Cut(strings.TrimPrefix(line, "time="), " "); ok {
			if at, err := time.Parse(time.RFC3339Nano, ts); err == nil {
				line = fmt.Sprintf("+%v %s", chaosRound(at.Sub(t0)), rest)
			}
		}
		out = append(out, g.name+": "+line)
	}
	if failed > maxFailed {
		out = append(out, fmt.Sprintf("%s: (%d more failed resumes)", g.name, failed-maxFailed))
	}
	return out
}

// chaosTimeline is what the chaos test did when, for the diagnostics.
type chaosTimeline struct {
	t0     time.Time
	mu     sync.Mutex
	events []string
}

func (tl *chaosTimeline) add(format string, args ...any) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.events = append(tl.events, fmt.Sprintf("+%v ", chaosRound(time.Since(tl.t0)))+fmt.Sprintf(format, args...))
}

func (tl *chaosTimeline) String() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return strings.Join(tl.events, "; ")
}

// metricLines returns the lines of the gateway's /metrics starting with
// one of prefixes.
func (g *chaosGateway) metricLines(prefixes ...string) []string {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + g.addr + "/metrics")
	if err != nil {
		return []string{"/metrics: " + err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out []string
	for line := range strings.SplitSeq(string(b), "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				out = append(out, line)
				break
			}
		}
	}
	return out
}

// chaosHTTP is the HTTP client of publishers and HTTP transports; requests
// carry their own deadlines.
var chaosHTTP = &http.Client{Transport: &http.Transport{
	DialContext:         (&net.Dialer{Timeout: patience}).DialContext,
	MaxIdleConns:        256,
	MaxIdleConnsPerHost: 128,
	IdleConnTimeout:     30 * time.Second,
}}

// Transports of chaos clients.
const (
	chaosWS      = "websocket"
	chaosSSE     = "eventsource"
	chaosPolling = "polling"
)

var chaosTransports = []string{chaosWS, chaosSSE, chaosPolling}

// chaosGapMark stands for a {"gap":true} frame in a client's log.
const chaosGapMark = -1

// chaosTally is what one client's log says about the messages of its key,
// expected in order want[0], want[1], …. lost counts every message never
// received; skipped, those of them the client was told it may have
// missed: a {"gap":true} frame came after the message received before
// them and before the next one received (or the end). lost-skipped is
// silent loss. longestGap is the longest run of consecutive lost messages.
type chaosTally struct {
	received, lost, duplicated, outOfOrder, gaps, longestGap, skipped int
}

func tallyChaos(log []int, want []int) chaosTally {
	t, _ := tallyChaosSilent(log, want)
	return t
}

// tallyChaosSilent is tallyChaos, also returning the messages lost
// silently (with no gap frame for them), in order.
func tallyChaosSilent(log []int, want []int) (chaosTally, []int) {
	var t chaosTally
	pos := make(map[int]int, len(want))
	for i, n := range want {
		pos[n] = i
	}
	seen := make(map[int]int, len(want))
	// covered[i]: want[i] was jumped over right after a gap frame.
	covered := make([]bool, len(want))
	last := -1             // index in want of the newest message received so far
	gapFrame := false      // a gap frame came since the last message received
	jump := func(to int) { // want[last+1 : to] were jumped over
		for i := last + 1; i < to; i++ {
			covered[i] = gapFrame
		}
	}
	for _, n := range log {
		if n == chaosGapMark {
			t.gaps++
			gapFrame = true
			continue
		}
		t.received++
		i, ok := pos[n]
		if !ok {
			t.outOfOrder++ // not a message of this key at all
			continue
		}
		seen[n]++
		if seen[n] > 1 {
			t.duplicated++
			continue
		}
		if i < last {
			t.outOfOrder++
			continue
		}
		jump(i)
		last, gapFrame = i, false
	}
	jump(len(want))
	var silent []int
	run := 0
	for i, n := range want {
		if seen[n] > 0 {
			run = 0
			continue
		}
		t.lost++
		if covered[i] {
			t.skipped++
		} else {
			silent = append(silent, n)
		}
		run++
		t.longestGap = max(t.longestGap, run)
	}
	return t, silent
}

// chaosStopper cancels the clients' context and waits (bounded) for their
// goroutines; safe to call twice.
func chaosStopper(t *testing.T, cancel context.CancelFunc, wg *sync.WaitGroup) func() {
	return func() {
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(patience):
			t.Errorf("clients did not stop within %v", patience)
		}
	}
}

// chaosWaitPositions waits until every client has its starting position.
func chaosWaitPositions(t *testing.T, clients []*chaosClient, what string) {
	t.Helper()
	eventually(t, 30*time.Second, what, func() bool {
		for _, c := range clients {
			if id, _ := c.state(); id == "" {
				return false
			}
		}
		return true
	})
}

// chaosPublish starts publishers goroutines sending messages 0…nMsgs-1
// (message n to key n mod nKeys) at rate messages per second at most; each
// owns the keys k with k mod publishers equal to its index, so per-key
// order holds. Each sends its error (nil when done) on the channel.
func chaosPublish(ctx context.Context, pub *chaosPublisher, seed int64, nMsgs, nKeys, rate, publishers int) (<-chan error, time.Time) {
	done := make(chan error, publishers)
	start := time.Now()
	for g := range publishers {
		prng := rand.New(rand.NewSource(seed + 1000 + int64(g)))
		go func() {
			for n := range nMsgs {
				if (n%nKeys)%publishers != g {
					continue
				}
				if d := time.Until(start.Add(time.Duration(n) * time.Second / time.Duration(rate))); d > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(d):
					}
				}
				if err := pub.publish(ctx, prng, n); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	return done, start
}

// chaosWant is the messages client i (of nKeys) must get, in order.
func chaosWant(i, nMsgs, nKeys int) []int {
	var want []int
	for n := i; n < nMsgs; n += nKeys {
		want = append(want, n)
	}
	return want
}
