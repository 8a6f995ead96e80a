package e2e

// Attacks on the WebSocket side of a running gateway (issue 7, sections 1
// and 2): each test shows the documented outcome for the attacking
// connection, and that the gateway is alive and a normal client on it
// still receives what is published.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/gateway"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

const (
	normalKey = "normal-key-0001"
	attackKey = "attack-key-0001"
)

// target is a running gateway under attack, however it was started.
type target struct {
	base    string                 // http://host:port
	path    string                 // the client path
	publish func(raw string) error // puts raw on the gateway's inbound channel
	alive   func() error           // nil while the gateway process runs
}

func (g *target) url(key string) string {
	return "ws" + strings.TrimPrefix(g.base, "http") + g.path + "?" + key
}

func stackTarget(s *stack) *target {
	return &target{
		base: s.httpURL(""), path: s.cfg.Path,
		publish: func(raw string) error { return s.rdb.Publish(context.Background(), s.cfg.Channel, raw).Err() },
		alive:   func() error { return nil }, // in-process: a panic would have ended the test binary
	}
}

// publishHTTP publishes raw through POST /publish (loopback, no token); it
// does not call t.Fatal, so probes may use it from any goroutine.
func publishHTTP(base, raw string) error {
	resp, err := http.Post(base+"/publish", "application/json", strings.NewReader(raw))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST /publish: %d %s", resp.StatusCode, body)
	}
	return nil
}

var probeSeq atomic.Int64

// probe publishes one message to key and waits up to 2 s for normal to
// receive it; it returns the latency. It does not call t.Fatal.
func (g *target) probe(normal *client, key string) (time.Duration, error) {
	if err := g.alive(); err != nil {
		return 0, err
	}
	resp, err := http.Get(g.base + "/healthz")
	if err != nil {
		return 0, fmt.Errorf("/healthz: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("/healthz: %d", resp.StatusCode)
	}
	want := fmt.Sprintf(`{"probe":%d}`, probeSeq.Add(1))
	start := time.Now()
	if err := g.publish(envelope(want, key)); err != nil {
		return 0, err
	}
	for {
		left := 2*time.Second - time.Since(start)
		if left <= 0 {
			return 0, fmt.Errorf("%s not received within 2 s", want)
		}
		got, err := normal.next(left)
		if err != nil {
			return 0, fmt.Errorf("waiting for %s: %w", want, err)
		}
		if got == `{"data":`+want+`}` {
			return time.Since(start), nil
		}
		// An older probe's message, late: keep waiting for this one.
	}
}

// stillServes asserts that the gateway is alive and that normal (a client
// of key) receives a message published now within 2 s. The issue asks for
// 100 ms: the latency is logged, and flagged in the log (not failed, to stay
// independent of machine speed) when above.
func (g *target) stillServes(t *testing.T, normal *client, key, after string) {
	t.Helper()
	d, err := g.probe(normal, key)
	if err != nil {
		t.Fatalf("after %s: %v", after, err)
	}
	note := ""
	if d > 100*time.Millisecond {
		note = " (over the 100 ms the issue asks for)"
	}
	t.Logf("after %s: normal client received in %v%s", after, d.Round(time.Microsecond), note)
}

// metricValue reads one sample from the gateway's /metrics (-1 if absent).
func metricValue(t testing.TB, base, name string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// maskedFrame encodes one client frame (masked), with the given RSV bits.
func maskedFrame(op ws.OpCode, fin bool, rsv byte, payload []byte) []byte {
	h := ws.Header{Fin: fin, OpCode: op, Rsv: rsv, Masked: true, Mask: [4]byte{0x37, 0xfa, 0x21, 0x3d}, Length: int64(len(payload))}
	var b bytes.Buffer
	_ = ws.WriteHeader(&b, h)
	p := append([]byte(nil), payload...)
	ws.Cipher(p, h.Mask, 0)
	return append(b.Bytes(), p...)
}

func cframe(op ws.OpCode, fin bool, payload string) []byte {
	return maskedFrame(op, fin, 0, []byte(payload))
}

// headerOnly encodes a masked frame header that declares length, with no
// payload behind it.
func headerOnly(op ws.OpCode, fin bool, length int64) []byte {
	var b bytes.Buffer
	if err := ws.WriteHeader(&b, ws.Header{Fin: fin, OpCode: op, Length: length, Masked: true, Mask: [4]byte{1, 2, 3, 4}}); err != nil {
		panic(err)
	}
	return b.Bytes()
}

func (c *client) writeRaw(frames ...[]byte) {
	c.t.Helper()
	_ = c.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.c.Write(bytes.Join(frames, nil)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// expectCloseOneOf is expectClose accepting any of codes; it returns the one
// received.
func (c *client) expectCloseOneOf(codes ...int) int {
	c.t.Helper()
	for {
		_, err := c.next(10 * time.Second)
		var ce *closeError
		if errors.As(err, &ce) {
			for _, code := range codes {
				if ce.Code == code {
					return code
				}
			}
			c.t.Fatalf("closed with %d %q, want one of %v", ce.Code, ce.Reason, codes)
		}
		if err != nil {
			c.t.Fatalf("waiting for close %v: %v", codes, err)
		}
	}
}

// TestAttackWSCrashFragmentWithHugeLength is the remote crash of issue 7 §1:
// a 1-byte non-final text frame, then a continuation frame declaring
// 2^63−1 bytes. The size check used to add before comparing, overflowed and
// the process died in makeslice. Now: 1009 before anything is allocated.
func TestAttackWSCrashFragmentWithHugeLength(t *testing.T) {
	s := newStack(t, []string{"--max-client-bytes", "1KiB"}, normalKey, attackKey)
	g := stackTarget(s)
	normal := mustDial(t, g.url(normalKey))
	waitLive(t, s, 1)

	for _, length := range []int64{math.MaxInt64, math.MaxInt64 - 1, 1<<63 - 1024, 1<<62 + 1, 1 << 32, 65536, 1024} {
		a := mustDial(t, g.url(attackKey))
		a.writeRaw(cframe(ws.OpText, false, "a"), headerOnly(ws.OpContinuation, true, length))
		a.expectClose(1009)
		g.stillServes(t, normal, normalKey, fmt.Sprintf("a continuation declaring %d bytes", length))
	}
	waitLive(t, s, 1)
	if got := testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues("too_big")); got != 7 {
		t.Errorf("disconnects{too_big} = %v, want 7", got)
	}
	if got := testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues("internal_error")); got != 0 {
		t.Errorf("disconnects{internal_error} = %v", got)
	}
}

// TestAttackWSCrashSizeBoundaries: --max-client-bytes counts the whole
// message across its fragments: exactly the limit is accepted, one byte
// more is 1009. Control frames between fragments do not count.
func TestAttackWSCrashSizeBoundaries(t *testing.T) {
	const limit = 1024
	s := newStack(t, []string{"--max-client-bytes", "1KiB"}, normalKey, attackKey)
	g := stackTarget(s)
	normal := mustDial(t, g.url(normalKey))
	waitLive(t, s, 1)
	x := strings.Repeat("x", limit)

	a := mustDial(t, g.url(attackKey))
	a.writeRaw(
		cframe(ws.OpText, false, x[:1]),
		cframe(ws.OpContinuation, false, x[:limit/2]),
		cframe(ws.OpPing, true, strings.Repeat("p", 125)), // between fragments: not counted
		cframe(ws.OpContinuation, true, x[:limit/2-1]),
	)
	a.writeRaw(cframe(ws.OpText, true, x)) // one frame of exactly the limit
	a.send("ping")
	a.expect("heartbeat message") // the pong is answered on the way, and skipped
	waitLive(t, s, 2)

	a.writeRaw(cframe(ws.OpText, false, x[:1]), cframe(ws.OpContinuation, false, x[:limit/2]), cframe(ws.OpContinuation, true, x[:limit/2]))
	a.expectClose(1009)
	g.stillServes(t, normal, normalKey, "a fragmented message one byte over the limit")

	b := mustDial(t, g.url(attackKey))
	b.writeRaw(cframe(ws.OpText, true, x+"y"))
	b.expectClose(1009)
	g.stillServes(t, normal, normalKey, "a frame one byte over the limit")
}

// TestAttackWSProtocolViolations: frames that break RFC 6455 close the
// attacking connection with 1002 (1007 for text that is not UTF-8); the
// gateway keeps serving.
func TestAttackWSProtocolViolations(t *testing.T) {
	s := newStack(t, nil, normalKey, attackKey)
	g := stackTarget(s)
	normal := mustDial(t, g.url(normalKey))
	waitLive(t, s, 1)
	cases := []struct {
		name   string
		frames [][]byte
		code   int
		reason string
	}{
		{"continuation without a message", [][]byte{cframe(ws.OpContinuation, true, "x")}, 1002, "protocol"},
		{"text inside a fragmented message", [][]byte{cframe(ws.OpText, false, "a"), cframe(ws.OpText, true, "b")}, 1002, "protocol"},
		{"RSV1 set", [][]byte{maskedFrame(ws.OpText, true, ws.Rsv(true, false, false), []byte("ping"))}, 1002, "protocol"},
		{"RSV2+RSV3 on a ping", [][]byte{maskedFrame(ws.OpPing, true, ws.Rsv(false, true, true), nil)}, 1002, "protocol"},
		{"unmasked frame", [][]byte{ws.MustCompileFrame(ws.NewTextFrame([]byte("ping")))}, 1002, "protocol"},
		{"ping of 126 bytes", [][]byte{cframe(ws.OpPing, true, strings.Repeat("p", 126))}, 1002, "protocol"},
		{"close declaring 2^63-1 bytes", [][]byte{headerOnly(ws.OpClose, true, math.MaxInt64)}, 1002, "protocol"},
		{"fragmented ping", [][]byte{cframe(ws.OpPing, false, "a"), cframe(ws.OpContinuation, true, "b")}, 1002, "protocol"},
		{"length with the MSB set", [][]byte{{0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}}, 1002, "protocol"},
		{"invalid UTF-8 text", [][]byte{cframe(ws.OpText, true, "pi\xffng")}, 1007, "invalid_data"},
		{"UTF-8 cut between fragments", [][]byte{cframe(ws.OpText, false, "\xe2\x82"), cframe(ws.OpContinuation, true, "x")}, 1007, "invalid_data"},
	}
	want := map[string]float64{}
	for _, tc := range cases {
		a := mustDial(t, g.url(attackKey))
		a.writeRaw(tc.frames...)
		a.expectClose(tc.code)
		want[tc.reason]++
		g.stillServes(t, normal, normalKey, tc.name+fmt.Sprintf(" (closed %d)", tc.code))
	}
	waitLive(t, s, 1)
	for reason, n := range want {
		if got := testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues(reason)); got != n {
			t.Errorf("disconnects{%s} = %v, want %v", reason, got, n)
		}
	}
}

// panicStore is a key store with a bug: asked about one key, it panics.
type panicStore struct {
	*keystore.Memory
	bomb  string
	calls atomic.Int64 // lookups of the bomb key
}

func (s *panicStore) Contains(ctx context.Context, key string) (bool, error) {
	if key == s.bomb {
		s.calls.Add(1)
		panic("key store bug")
	}
	return s.Memory.Contains(ctx, key)
}

// errorLines is a slog handler that keeps error-level messages and
// forwards every record to next.
type errorLines struct {
	next  slog.Handler
	mu    *sync.Mutex
	lines *[]string
}

func (h errorLines) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h errorLines) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		var b strings.Builder
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			if a.Key != "stack" {
				fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			}
			return true
		})
		h.mu.Lock()
		*h.lines = append(*h.lines, b.String())
		h.mu.Unlock()
	}
	return h.next.Handle(ctx, r)
}

func (h errorLines) WithAttrs(as []slog.Attr) slog.Handler {
	h.next = h.next.WithAttrs(as)
	return h
}

func (h errorLines) WithGroup(n string) slog.Handler {
	h.next = h.next.WithGroup(n)
	return h
}

// startInProcess runs a gateway in this process with opts (an in-process
// broker: publish through POST /publish).
func startInProcess(t *testing.T, opts gateway.Options, args ...string) (*gateway.Gateway, *target) {
	t.Helper()
	base := []string{"--listen", "127.0.0.1:0", "--shutdown-timeout", "5s", "--log-level", "debug"}
	cfg, err := config.ParseServe(append(base, args...), func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	gw, err := gateway.New(cfg, opts)
	if err != nil {
		t.Fatalf("gateway: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("gateway Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("gateway did not stop within 15s")
		}
	})
	g := &target{base: "http://" + gw.Addr().String(), path: cfg.Path, alive: func() error { return nil }}
	g.publish = func(raw string) error { return publishHTTP(g.base, raw) }
	eventually(t, 10*time.Second, "gateway ready", func() bool {
		resp, err := http.Get(g.base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return gw, g
}

// TestAttackWSPanicRecovery: a bug reached by one client's input (here a
// key store that panics for one key) ends that connection with 1011 and one
// redacted error line; the process and every other client carry on.
func TestAttackWSPanicRecovery(t *testing.T) {
	const bomb = "bomb-key-0001-secret"
	store := &panicStore{Memory: keystore.NewMemory(normalKey, attackKey), bomb: bomb}
	var mu sync.Mutex
	var lines []string
	log := slog.New(errorLines{next: testenv.Logger(t).Handler(), mu: &mu, lines: &lines})
	gw, g := startInProcess(t, gateway.Options{Store: store, Logger: log})
	m := gw.Metrics()

	normal := mustDial(t, g.url(normalKey))
	bystander := mustDial(t, g.url(attackKey)) // another client, connected before the attack
	eventually(t, 5*time.Second, "2 live", func() bool { return gw.Hub().Live() == 2 })

	const attacks = 20
	for i := range attacks {
		a := mustDial(t, g.url(bomb))
		a.expectClose(1011)
		if i == 0 {
			g.stillServes(t, normal, normalKey, "the first panicking connection")
		}
	}
	g.stillServes(t, normal, normalKey, fmt.Sprintf("%d panicking connections", attacks))
	if err := publishHTTP(g.base, envelope(`{"to":"bystander"}`, attackKey)); err != nil {
		t.Fatal(err)
	}
	bystander.expect(`{"data":{"to":"bystander"}}`)
	// And a new client is still admitted.
	late := mustDial(t, g.url(attackKey))
	late.send("ping")
	late.expect("heartbeat message")

	if n := store.calls.Load(); n != attacks {
		t.Errorf("bomb key looked up %d times, want %d", n, attacks)
	}
	mu.Lock()
	got := append([]string(nil), lines...)
	mu.Unlock()
	if len(got) != attacks {
		t.Errorf("%d error lines, want one per panic (%d): %q", len(got), attacks, got)
	}
	for _, l := range got {
		if !strings.Contains(l, "internal error") || !strings.Contains(l, "key store bug") {
			t.Errorf("error line %q: want the internal error and its panic", l)
		}
		if strings.Contains(l, "secret") {
			t.Errorf("error line shows the whole key: %q", l)
		}
	}
	// A panic during admission ends a connection that was never
	// registered: it is counted as a rejection for internal_error, and
	// leaves no session behind.
	eventually(t, 5*time.Second, "3 live", func() bool { return gw.Hub().Live() == 3 })
	if got := testutil.ToFloat64(m.Rejections.WithLabelValues("internal_error")); got != attacks {
		t.Errorf("rejections{internal_error} = %v, want %d", got, attacks)
	}
}

// --- attacks on the built binary, with its memory watched ---

// proc is the gateway binary running with a key file.
type proc struct {
	*target
	cmd    *exec.Cmd
	logs   *lockedBuffer
	exited chan struct{}
}

// startBinary runs the gateway binary (WSPUBSUB_ATTACK_BINARY, if set, runs
// another build instead, e.g. one from before a fix) on a key file holding
// keys, with the in-process broker.
func startBinary(t *testing.T, keys []string, args ...string) *proc {
	t.Helper()
	bin := os.Getenv("WSPUBSUB_ATTACK_BINARY")
	if bin == "" {
		bin = binary(t)
	}
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte(strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	// --max-message-bytes lets the tests use a small --queue-bytes, which
	// must hold one message.
	cmd := exec.Command(bin, append([]string{"--listen", addr, "--keys-file", keyFile, "--log-level", "warn", "--max-message-bytes", "16KiB"}, args...)...)
	p := &proc{cmd: cmd, logs: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("gateway log:\n%s", p.logs.String())
		}
	})
	p.target = &target{base: "http://" + addr, path: "/websocket"}
	p.publish = func(raw string) error { return publishHTTP(p.base, raw) }
	p.alive = func() error {
		select {
		case <-p.exited:
			return fmt.Errorf("the gateway process exited: %v", cmd.ProcessState)
		default:
			return nil
		}
	}
	eventually(t, 10*time.Second, "gateway up", func() bool {
		if p.alive() != nil {
			return true
		}
		resp, err := http.Get(p.base + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK
	})
	if err := p.alive(); err != nil {
		t.Fatalf("starting the gateway: %v\n%s", err, p.logs.String())
	}
	return p
}

// rss returns the process's resident set size in KiB.
func (p *proc) rss() (int, error) { return procRSSKB(p.cmd.Process.Pid) }

// watchRSS samples the process's RSS until stop is called, which returns
// the peak in KiB.
func (p *proc) watchRSS(*testing.T) (stop func() int) { return watchRSS(p.cmd.Process.Pid) }

// prober checks, every 200 ms while an attack runs, that the normal client
// receives what is published.
type prober struct {
	stop chan struct{}
	done chan struct{}
	lat  []time.Duration
	err  error
}

func startProber(g *target, normal *client, key string) *prober {
	p := &prober{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			d, err := g.probe(normal, key)
			if err != nil {
				p.err = err
				return
			}
			p.lat = append(p.lat, d)
			select {
			case <-p.stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return p
}

// finish stops the prober and fails the test if the normal client missed a
// message during the attack.
func (p *prober) finish(t *testing.T) {
	t.Helper()
	close(p.stop)
	<-p.done
	if p.err != nil {
		t.Fatalf("normal client during the attack: %v", p.err)
	}
	var worst time.Duration
	for _, d := range p.lat {
		worst = max(worst, d)
	}
	t.Logf("during the attack the normal client received %d probes, slowest in %v", len(p.lat), worst.Round(time.Microsecond))
}

// rssBound is the growth of the gateway's RSS an attack by one connection
// may cause. What that connection may hold is bounded: one pending pong
// (125 bytes), its outbound queue (--queue-bytes, 64 KiB here), a write
// still pending in its slow lane (at most what one drain of that queue
// produced) and one client message being assembled (--max-client-bytes);
// kernel socket buffers do not count in RSS. What remains is garbage
// between two GC cycles (every ping allocates its payload and its pong)
// and the runtime's own growth, a few MB. 64 MB is far above that and far
// below what the unbounded queue grew to (hundreds of MB in seconds).
const rssBound = 64 << 10 // KiB

// TestAttackWSPingFlood is issue 7 §2's ping flood: one connection sends
// 125-byte pings as fast as it can and never reads. Each ping used to queue
// a pong outside --queue-bytes (RSS 15 MB → 464 MB in 10 s); now only the
// latest ping is owed a pong.
func TestAttackWSPingFlood(t *testing.T) {
	p := startBinary(t, []string{normalKey, attackKey}, "--queue-bytes", "64KiB")
	normal := mustDial(t, p.url(normalKey))
	p.stillServes(t, normal, normalKey, "start-up")
	// The attacker keeps a default socket receive buffer. With a tiny one
	// (SetReadBuffer 4096) Linux soon stops delivering the never-reading
	// client's own uploads (the flood stalls after ~30,000 pings), so the
	// build from before the fix would pass too: with the default one it
	// grows by 200 MB in 3 s and fails.
	a := mustDial(t, p.url(attackKey))
	eventually(t, 5*time.Second, "2 live", func() bool {
		return metricValue(t, p.base, `wspubsub_connections{transport="websocket"}`) == 2
	})

	before, err := p.rss()
	if err != nil {
		t.Fatal(err)
	}
	stopRSS := p.watchRSS(t)
	pr := startProber(p.target, normal, normalKey)

	// Bounded by time and by count: at most 1,000,000 pings (131 MB on the
	// wire; before the fix they queued more than 200 MB of pongs).
	const batch, maxPings = 1000, 1_000_000
	var buf []byte
	for range batch {
		buf = append(buf, maskedFrame(ws.OpPing, true, 0, bytes.Repeat([]byte("p"), 125))...)
	}
	sent := 0
	start := time.Now()
	var werr error
	for sent < maxPings && time.Since(start) < 3*time.Second {
		_ = a.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, werr = a.c.Write(buf); werr != nil {
			break
		}
		sent += batch
	}
	elapsed := time.Since(start)
	pr.finish(t)
	p.stillServes(t, normal, normalKey, fmt.Sprintf("%d pings", sent))
	peak := stopRSS()
	after, _ := p.rss()
	stalls := metricValue(t, p.base, "wspubsub_write_stalls_total")
	t.Logf("ping flood: %d pings in %v (write error: %v); gateway RSS before %d KiB, peak %d KiB (+%d KiB), after %d KiB; write stalls %v",
		sent, elapsed.Round(time.Millisecond), werr, before, peak, peak-before, after, stalls)
	if peak-before > rssBound {
		t.Errorf("gateway RSS grew by %d KiB during the ping flood, bound %d KiB", peak-before, rssBound)
	}
	if err := p.alive(); err != nil {
		t.Fatal(err)
	}
}

// TestAttackWSHeartbeatFlood: a client that sends "ping" text (each answered
// with a heartbeat message) and never reads. With the default rate it is
// closed with 4029; with the rate limit lifted the replies count against
// --queue-bytes and it is closed with 4008 once they fill it. Memory stays
// bounded either way.
func TestAttackWSHeartbeatFlood(t *testing.T) {
	t.Run("default rate", func(t *testing.T) {
		p := startBinary(t, []string{normalKey, attackKey}, "--queue-bytes", "64KiB")
		normal := mustDial(t, p.url(normalKey))
		a := mustDial(t, p.url(attackKey))
		eventually(t, 5*time.Second, "2 live", func() bool {
			return metricValue(t, p.base, `wspubsub_connections{transport="websocket"}`) == 2
		})
		// 3,000 pings (30 KB): less than the gateway reads after closing, so
		// the close frame is not lost to a reset.
		var buf []byte
		for range 3000 {
			buf = append(buf, cframe(ws.OpText, true, "ping")...)
		}
		a.writeRaw(buf)
		a.expectClose(4029)
		p.stillServes(t, normal, normalKey, "a heartbeat flood at the default rate")
		eventually(t, 5*time.Second, "disconnects{rate_limited} = 1", func() bool {
			return metricValue(t, p.base, `wspubsub_disconnects_total{reason="rate_limited"}`) == 1
		})
	})

	t.Run("rate limit lifted", func(t *testing.T) {
		p := startBinary(t, []string{normalKey, attackKey}, "--queue-bytes", "64KiB",
			"--client-rate", "100000000", "--client-burst", "100000000", "--write-timeout", "60s")
		normal := mustDial(t, p.url(normalKey))
		// A default receive buffer (see the ping flood), also because the
		// attacker reads everything back at the end, which a 4 KiB window
		// makes slow.
		a := mustDial(t, p.url(attackKey))
		eventually(t, 5*time.Second, "2 live", func() bool {
			return metricValue(t, p.base, `wspubsub_connections{transport="websocket"}`) == 2
		})
		before, err := p.rss()
		if err != nil {
			t.Fatal(err)
		}
		stopRSS := p.watchRSS(t)
		pr := startProber(p.target, normal, normalKey)

		// How much the kernel buffers between the gateway and a client that
		// does not read differs between machines, so the flood does not
		// guess: it runs until the gateway reports a stalled write (the
		// buffers are full and stay full, as the client reads nothing; from
		// then on replies stay in the queue), then until the gateway has
		// handled 20,000 more pings, whose 380 KB of replies must overflow
		// the 64 KiB queue. Bounded by count and time.
		const batch, maxPings, extra = 1000, 20_000_000, 20_000
		var buf []byte
		for range batch {
			buf = append(buf, cframe(ws.OpText, true, "ping")...)
		}
		handled := func() float64 { return metricValue(t, p.base, `wspubsub_client_messages_total{kind="ping"}`) }
		sent, stalledAt := 0, -1.0 // stalledAt: pings handled when the first stall was seen
		start := time.Now()
		for {
			if time.Since(start) > 30*time.Second {
				t.Fatalf("after %v: %d pings sent, %v handled, first stall at %v: the queue was not exercised", time.Since(start), sent, handled(), stalledAt)
			}
			if stalledAt < 0 && metricValue(t, p.base, "wspubsub_write_stalls_total") >= 1 {
				stalledAt = handled()
			}
			if stalledAt >= 0 && handled() >= stalledAt+extra {
				break
			}
			if sent >= maxPings {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			for range 20 {
				_ = a.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if _, err := a.c.Write(buf); err != nil {
					t.Fatalf("flood write after %d pings (first stall at %v handled): %v", sent, stalledAt, err)
				}
				sent += batch
			}
		}
		flooded := time.Since(start)
		// Now read: what the kernel held, then the close.
		code := a.expectCloseOneOf(4008, 4029)
		read := time.Since(start) - flooded
		pr.finish(t)
		peak := stopRSS()
		p.stillServes(t, normal, normalKey, fmt.Sprintf("a heartbeat flood of %d pings (closed %d)", sent, code))
		after, _ := p.rss()
		t.Logf("heartbeat flood: %d pings sent in %v, first stall seen after %v handled; read back and closed %d in %v; gateway RSS before %d KiB, peak %d KiB (+%d KiB), after %d KiB",
			sent, flooded.Round(time.Millisecond), stalledAt, code, read.Round(time.Millisecond), before, peak, peak-before, after)
		if peak-before > rssBound {
			t.Errorf("gateway RSS grew by %d KiB during the heartbeat flood, bound %d KiB", peak-before, rssBound)
		}
		reason := map[int]string{4008: "too_slow", 4029: "rate_limited"}[code]
		eventually(t, 10*time.Second, "disconnects{"+reason+"} = 1", func() bool {
			return metricValue(t, p.base, `wspubsub_disconnects_total{reason="`+reason+`"}`) == 1
		})
	})
}
