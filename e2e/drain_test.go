package e2e

// The proof of issue 10's graceful drain: a gateway that gets SIGTERM
// hands its clients to another gateway a few at a time, with 1012, and
// resuming clients lose nothing.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// TestDrainHandsClientsOverWithoutLoss: 30 resuming clients (WebSocket,
// EventSource, long-polling in turn) are connected to gateway A; a
// publisher sends 3,000 numbered messages through POST /publish of either
// gateway, retrying with the same idempotency key until acknowledged; A
// gets SIGTERM with --drain-period 1.5s. Every client's connection to A must
// end with 1012, the client then resumes on gateway B with its last id
// (EventSource: as Last-Event-ID, as a browser does), and every client must
// end with every message of its key exactly once and in order. A must
// exit by itself, its drain spread over several batches.
func TestDrainHandsClientsOverWithoutLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("drain end-to-end test skipped in -short mode")
	}
	const (
		nKeys      = 30
		nMsgs      = 3000
		rate       = 500                     // messages per second at most: publishing spans the drain
		publishers = 10                      // each owns the keys k with k%publishers == its index: per-key order holds
		drainFor   = 1500 * time.Millisecond // 15 batches: of 2
	)
	began := time.Now()
	seed := chaosSeed(t)
	redis := testenv.Redis(t)
	keys := make([]string, nKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("drain-key-%02d", i)
	}
	args := []string{"--redis-url", redis.URL(), "--history-size", "10000", "--history-ttl", "5m",
		"--max-sessions-per-addr", "0", "--max-sessions-per-key", "0", "--poll-timeout", "2s"}
	a := newChaosGateway(t, "gwA", keys, append(args, "--drain-period", drainFor.String())...)
	b := newChaosGateway(t, "gwB", keys, args...)

	// Every wait below ends by this deadline: a run that goes wrong fails,
	// it does not hang; far above a healthy run, so a loaded machine is
	// never failed for being slow.
	end := time.Now().Add(10 * time.Minute)
	ctx, cancel := context.WithDeadline(context.Background(), end)
	defer cancel()
	clients := make([]*chaosClient, nKeys)
	aEnd := make([]string, nKeys) // how each client's connection to A ended
	var wg sync.WaitGroup
	for i := range clients {
		c := newChaosClient(keys[i], chaosTransports[i%len(chaosTransports)], seed+int64(i)+1)
		c.t0 = began
		clients[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			aEnd[i] = "still connected"
			if err := c.connect(ctx, a); err != nil {
				aEnd[i] = chaosCause(err)
			}
			// Then B, for good; a refusal or failure is retried shortly.
			for ctx.Err() == nil {
				if err := c.connect(ctx, b); err != nil && ctx.Err() == nil {
					c.refused(chaosCause(err))
					select {
					case <-ctx.Done():
					case <-time.After(time.Duration(20+c.rng.Intn(80)) * time.Millisecond):
					}
				}
			}
		}()
	}
	stopClients := chaosStopper(t, cancel, &wg)
	defer stopClients()
	chaosWaitPositions(t, clients, "every client's starting position on A")

	pub := newChaosPublisher([]*chaosGateway{a, b}, keys)
	pub.t0 = began
	pubDone, pubStart := chaosPublish(ctx, pub, seed, nMsgs, nKeys, rate, publishers)
	eventually(t, 30*time.Second, "a third of the messages acknowledged", func() bool { return pub.acked.Load() >= nMsgs/3 })

	// SIGTERM: A drains, then exits by itself.
	termAt := time.Now()
	t.Logf("SIGTERM to gwA after %d messages acknowledged", pub.acked.Load())
	exited := a.terminate(t)
	sawDraining := false // /readyz said so while A drained (logged: the unit tests assert it)
	for waiting := true; waiting; {
		select {
		case <-exited:
			waiting = false
		case <-time.After(10 * time.Millisecond):
			sawDraining = sawDraining || a.readyzStatus() == "draining"
			if time.Since(termAt) > patience {
				t.Fatalf("gwA did not exit within %v of SIGTERM", patience)
			}
		}
	}
	took := time.Since(termAt)
	if st := a.exitState(); st == nil || !st.Success() {
		t.Errorf("gwA exit: %v", st)
	}
	t.Logf("gwA exited %v after SIGTERM (drain period %v); /readyz seen draining: %v", took.Round(time.Millisecond), drainFor, sawDraining)

	for range publishers {
		select {
		case err := <-pubDone:
			if err != nil {
				t.Fatalf("publisher: %v", err)
			}
		case <-time.After(time.Until(end)):
			t.Fatalf("publishers not done by the deadline: %d acknowledged", pub.acked.Load())
		}
	}
	t.Logf("published %d messages in %v (%d retries)", pub.acked.Load(), time.Since(pubStart).Round(time.Millisecond), pub.retries.Load())
	wantLast := func(k int) int { return nMsgs - 1 - (nMsgs-1-k)%nKeys }
	caughtUp := func() bool {
		for i, c := range clients {
			if _, n := c.state(); n != wantLast(i) {
				return false
			}
		}
		return true
	}
	for !caughtUp() && time.Now().Before(end) {
		time.Sleep(20 * time.Millisecond)
	}
	stopClients()

	// How A's connections ended: every one with the drain's 1012.
	ends := map[string]int{}
	for _, e := range aEnd {
		ends[e]++
	}
	t.Logf("connections to gwA ended: %v", ends)
	if ends["close 1012"] != nKeys {
		t.Errorf("connections to gwA ended %v, want all %d with close 1012", ends, nKeys)
	}
	// A's drain: its log line, several batches, none larger than its share.
	m := regexp.MustCompile(`msg=drained closed=(\d+) batches=(\d+) largest_batch=(\d+)`).FindStringSubmatch(a.logs.String())
	if m == nil {
		t.Errorf("gwA did not log a complete drain:\n%s", chaosTail(a.logs.String(), 4<<10))
	} else {
		closed, _ := strconv.Atoi(m[1])
		batches, _ := strconv.Atoi(m[2])
		largest, _ := strconv.Atoi(m[3])
		steps := int(drainFor / (100 * time.Millisecond))
		t.Logf("gwA drained %d connections in %d batches (largest %d)", closed, batches, largest)
		if closed != nKeys || batches < 2 || largest > (nKeys+steps-1)/steps {
			t.Errorf("drain closed %d in %d batches, largest %d; want %d in ≥ 2 batches of at most %d", closed, batches, largest, nKeys, (nKeys+steps-1)/steps)
		}
	}
	t.Logf("gwB: %s", strings.Join(b.metricLines("wspubsub_resumes_total", "wspubsub_rejections_total{reason=\"draining\"}"), "; "))

	// The verdict: exactly once, in order, per key.
	var total chaosTally
	var lostReports []string
	refusals := map[string]int{}
	for i, c := range clients {
		c.mu.Lock()
		want := chaosWant(i, nMsgs, nKeys)
		tl := tallyChaos(c.log, want)
		if tl.lost+tl.duplicated+tl.outOfOrder+tl.gaps > 0 {
			t.Errorf("%s (%s): lost %d, duplicated %d, out of order %d, gap frames %d",
				c.key, c.transport, tl.lost, tl.duplicated, tl.outOfOrder, tl.gaps)
			if tl.lost > 0 && len(lostReports) < 5 {
				lostReports = append(lostReports, c.lostReport(want, pub, 3))
			}
		}
		if len(c.unexpected) > 0 {
			t.Errorf("%s (%s) unexpected frames: %q", c.key, c.transport, c.unexpected)
		}
		for k, v := range c.refusals {
			refusals[k] += v
		}
		total.received += tl.received
		total.lost += tl.lost
		total.duplicated += tl.duplicated
		total.outOfOrder += tl.outOfOrder
		total.gaps += tl.gaps
		c.mu.Unlock()
	}
	var rf []string
	for k, v := range refusals {
		rf = append(rf, fmt.Sprintf("%s×%d", k, v))
	}
	slices.Sort(rf)
	t.Logf("RESULT: %d messages expected, %d received: lost %d, duplicated %d, out of order %d, gap frames %d; reconnects to gwB refused or failed: %s; total %v",
		nMsgs, total.received, total.lost, total.duplicated, total.outOfOrder, total.gaps, strings.Join(rf, ", "), time.Since(began).Round(time.Millisecond))
	if len(lostReports) > 0 {
		t.Logf("LOST MESSAGES\n%s", strings.Join(lostReports, "\n"))
	}
	if total.received != nMsgs {
		t.Errorf("received %d messages in all, want %d", total.received, nMsgs)
	}
}

// terminate sends SIGTERM to the process and returns a channel closed when
// it has exited; the process is then forgotten (exitState reports how it
// ended).
func (g *chaosGateway) terminate(t *testing.T) <-chan struct{} {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil {
		t.Fatalf("%s is not running", g.name)
	}
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM to %s: %v", g.name, err)
	}
	return g.exited
}

// exitState returns how the process ended, once it has; the cleanup's
// Kill then has nothing to do.
func (g *chaosGateway) exitState() *os.ProcessState {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil {
		return nil
	}
	select {
	case <-g.exited:
	default:
		return nil
	}
	st := g.cmd.ProcessState
	g.cmd = nil
	return st
}

// readyzStatus is the status /readyz answers, or "" when it does not.
func (g *chaosGateway) readyzStatus() string {
	resp, err := chaosHTTP.Get("http://" + g.addr + "/readyz")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var body struct{ Status string }
	_ = json.NewDecoder(io.LimitReader(resp.Body, 4<<10)).Decode(&body)
	return body.Status
}

// TestBinarySecondSignalSkipsTheDrain: the binary drains on SIGTERM, and a
// second SIGTERM closes everyone left at once with 1001. With a drain
// period of 10,000 hours the second batch is 10 hours away: only the
// signal can end the drain.
func TestBinarySecondSignalSkipsTheDrain(t *testing.T) {
	bin := binary(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cmd := exec.Command(bin, "--listen", addr, "--drain-period", "10000h")
	cmd.Env = os.Environ()
	var logs lockedBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() { _ = cmd.Process.Kill() }()
	eventually(t, 10*time.Second, "gateway ready", func() bool {
		r, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == http.StatusOK
	})
	clients := []*client{mustDial(t, "ws://"+addr+"/websocket?"+demoKey), mustDial(t, "ws://"+addr+"/websocket?"+demoKey)}
	for _, c := range clients {
		c.send("ping")
		c.expect("heartbeat message") // admitted
	}
	codes := make(chan int, len(clients))
	for _, c := range clients {
		go func() {
			for {
				_, err := c.next(30 * time.Second)
				var ce *closeError
				if errors.As(err, &ce) {
					codes <- ce.Code
					return
				}
				if err != nil {
					codes <- -1
					return
				}
			}
		}()
	}
	nextCode := func() int {
		select {
		case code := <-codes:
			return code
		case <-time.After(patience):
			t.Fatalf("no close within %v\n%s", patience, logs.String())
			return 0
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if code := nextCode(); code != 1012 {
		t.Fatalf("first batch closed with %d, want 1012\n%s", code, logs.String())
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if code := nextCode(); code != 1001 {
		t.Fatalf("after the second signal: closed with %d, want 1001\n%s", code, logs.String())
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, logs.String())
		}
	case <-time.After(patience):
		t.Fatalf("no exit within %v of the second signal\n%s", patience, logs.String())
	}
	for _, want := range []string{"draining:", "second signal", "drain cut short"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}
