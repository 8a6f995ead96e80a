package e2e

// Support for the chaos tests (chaos_test.go): gateway processes that can
// be SIGKILLed and restarted on their port, a publisher that retries with
// the same idempotency key until acknowledged, and resuming clients over
// the three transports that drop their connection at random moments and
// resume with the last id they received.

import (
	"context"
	"encoding/json"
	"errors"
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
	"sync/atomic"
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
	g := &chaosGateway{t: t, name: name, logs: &lockedBuffer{},
		addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}
	// Info: the subscription's losses and restorations and the resyncs,
	// which the diagnostics of a lost message show.
	g.args = append([]string{"--listen", g.addr, "--keys-file", keyFile, "--log-level", "info"}, args...)
	t.Cleanup(func() {
		g.Kill()
		if t.Failed() {
			t.Logf("%s log (last 8 KiB):\n%s", g.name, chaosTail(g.logs.String(), 8<<10))
		}
	})
	g.Start()
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
	g.mu.Lock()
	if g.cmd != nil {
		g.mu.Unlock()
		return
	}
	cmd := exec.Command(binary(g.t), g.args...)
	cmd.Env = os.Environ()
	cmd.Stdout, cmd.Stderr = g.logs, g.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		g.mu.Unlock()
		g.t.Fatalf("starting %s: %v", g.name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	g.cmd, g.exited = cmd, exited
	g.mu.Unlock()
	deadline := time.Now().Add(20 * time.Second)
	for !g.get("/healthz") {
		select {
		case <-exited:
			g.t.Fatalf("%s exited at start: %v\n%s", g.name, cmd.ProcessState, chaosTail(g.logs.String(), 4<<10))
		default:
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%s not healthy within 20s", g.name)
		}
		time.Sleep(20 * time.Millisecond)
	}
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
	DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
	MaxIdleConns:        256,
	MaxIdleConnsPerHost: 128,
	IdleConnTimeout:     30 * time.Second,
}}

// chaosPublisher publishes numbered messages to keys[n%len(keys)] through
// POST /publish of a random gateway, retrying with the same idempotency key
// until it is acknowledged.
type chaosPublisher struct {
	gws     []*chaosGateway
	keys    []string
	timeout time.Duration // of one attempt
	giveUp  time.Duration // per message
	// impatience is the share of attempts given a timeout of 0-3 ms.
	impatience float64

	acked   atomic.Int64 // messages acknowledged
	retries atomic.Int64 // attempts beyond the first
	dupAcks atomic.Int64 // acknowledged as "duplicate" (an earlier attempt had recorded it)
	t0      time.Time    // the test's start, which the diagnostics count from
	mu      sync.Mutex
	ids     map[int]string // the id acknowledged for n
	acks    map[int]chaosAck
	failed  []string       // why attempts failed, first few
	fails   map[string]int // attempts failed, by cause
}

// chaosAck is how message n came to be acknowledged, for the diagnostics
// of a lost message.
type chaosAck struct {
	gw       string        // the gateway whose answer acknowledged it
	at       time.Duration // when, since t0
	status   string        // accepted or duplicate
	attempts []string      // the attempts before it, first few: when, where, outcome
}

func newChaosPublisher(gws []*chaosGateway, keys []string) *chaosPublisher {
	return &chaosPublisher{gws: gws, keys: keys, timeout: 2 * time.Second, giveUp: 60 * time.Second,
		t0: time.Now(), ids: map[int]string{}, acks: map[int]chaosAck{}, fails: map[string]int{}}
}

func (p *chaosPublisher) fail(cause string, detail string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fails[cause]++
	if len(p.failed) < 10 {
		p.failed = append(p.failed, detail)
	}
}

// publish sends message n to keys[n%len(keys)] until acknowledged; ctx
// ends it early.
func (p *chaosPublisher) publish(ctx context.Context, rng *rand.Rand, n int) error {
	return p.publishTo(ctx, rng, p.keys[n%len(p.keys)], n)
}

// publishTo sends {"n":n} to key until acknowledged, every attempt with the
// idempotency key chaos-<n>.
func (p *chaosPublisher) publishTo(ctx context.Context, rng *rand.Rand, key string, n int) error {
	body := fmt.Sprintf(`{"recipients":[%q],"data":{"n":%d}}`, key, n)
	idem := fmt.Sprintf("chaos-%d", n)
	start := time.Now()
	var tried []string // for the diagnostics
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			p.retries.Add(1)
			if time.Since(start) > p.giveUp {
				return fmt.Errorf("message %d not acknowledged within %v", n, p.giveUp)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(10+rng.Intn(10*min(attempt, 10))) * time.Millisecond):
			}
		}
		g := p.gws[rng.Intn(len(p.gws))]
		timeout := p.timeout
		if p.impatience > 0 && rng.Float64() < p.impatience {
			// A publisher giving up early: the gateway may well record
			// the message after all, and the retry must not record it
			// again.
			timeout = time.Duration(rng.Intn(3000)) * time.Microsecond
		}
		sent := time.Since(p.t0)
		status, ids, err := p.attempt(ctx, g, body, idem, timeout)
		if len(tried) < 6 && (err != nil || (status != "accepted" && status != "duplicate")) {
			what := status
			if err != nil {
				what = err.Error()
				if i := strings.LastIndex(what, ": "); i >= 0 {
					what = what[i+2:]
				}
			}
			tried = append(tried, fmt.Sprintf("+%v %s (timeout %v): %s", chaosRound(sent), g.name, timeout, what))
		}
		switch {
		case err != nil:
			cause := "error"
			var ne net.Error
			switch {
			case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
				cause = "timeout"
			case errors.Is(err, syscall.ECONNREFUSED):
				cause = "refused"
			case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				cause = "reset"
			}
			p.fail(cause, fmt.Sprintf("n=%d via %s: %v", n, g.name, err))
			continue
		case status == "accepted" || status == "duplicate":
			if len(ids) != 1 {
				return fmt.Errorf("message %d acknowledged with ids %v, want one", n, ids)
			}
			if status == "duplicate" {
				p.dupAcks.Add(1)
			}
			p.mu.Lock()
			p.ids[n] = ids[0]
			p.acks[n] = chaosAck{gw: g.name, at: time.Since(p.t0), status: status, attempts: tried}
			p.mu.Unlock()
			p.acked.Add(1)
			return nil
		default:
			p.fail(status, fmt.Sprintf("n=%d via %s: %s", n, g.name, status))
		}
	}
}

// attempt is one POST; status is the acknowledgement's status, or the
// HTTP status and body when it was not 202.
func (p *chaosPublisher) attempt(ctx context.Context, g *chaosGateway, body, idem string, timeout time.Duration) (string, []string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+g.addr+"/publish", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", idem)
	resp, err := chaosHTTP.Do(req)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", nil, err
	}
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Sprintf("HTTP %d", resp.StatusCode), nil, nil
	}
	var ack struct {
		Status string   `json:"status"`
		IDs    []string `json:"ids"`
	}
	if err := json.Unmarshal(b, &ack); err != nil {
		return "", nil, fmt.Errorf("202 with %q: %v", b, err)
	}
	return ack.Status, ack.IDs, nil
}

// ackOf returns how n was acknowledged.
func (p *chaosPublisher) ackOf(n int) chaosAck {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.acks[n]
}

// chaosRound rounds d for the diagnostics: milliseconds are what matter.
func chaosRound(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

// idOf returns the id acknowledged for n.
func (p *chaosPublisher) idOf(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ids[n]
}

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
// expected in order want[0], want[1], ….
type chaosTally struct {
	received, lost, duplicated, outOfOrder, gaps, longestGap int
}

func tallyChaos(log []int, want []int) chaosTally {
	var t chaosTally
	pos := make(map[int]int, len(want))
	for i, n := range want {
		pos[n] = i
	}
	seen := make(map[int]int, len(want))
	last := -1 // index in want of the newest message received so far
	for _, n := range log {
		if n == chaosGapMark {
			t.gaps++
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
		}
		last = max(last, i)
	}
	run := 0
	for _, n := range want {
		if seen[n] == 0 {
			t.lost++
			run++
			t.longestGap = max(t.longestGap, run)
		} else {
			run = 0
		}
	}
	return t
}

// pollChaos is one poll of key's connection sid on g naming since; its
// body ("" when the poll timed out with nothing).
func pollChaos(t *testing.T, g *chaosGateway, key, sid, since string) string {
	t.Helper()
	code, body, hdr := do(t, "GET", "http://"+g.addr+"/websocket?"+key+"&sid="+sid+"&since="+since, "", nil, "X-Socket-Transport", "xhrPolling")
	if code != 200 {
		t.Fatalf("poll of %s since %q: %d %q %v", g.name, since, code, body, hdr)
	}
	return body
}

// chaosPollFor polls, naming the same since again after an empty answer
// (a machine too loaded to deliver within --poll-timeout), until an answer
// comes; bounded in count, not in time.
func chaosPollFor(t *testing.T, g *chaosGateway, key, sid, since string) string {
	t.Helper()
	for range 20 {
		if body := pollChaos(t, g, key, sid, since); body != "" {
			return body
		}
	}
	t.Fatalf("20 polls of %s since %q answered nothing", g.name, since)
	return ""
}
