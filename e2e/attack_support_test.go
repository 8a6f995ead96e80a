package e2e

// Support for the attack tests (attack_*_test.go): a gateway under attack
// however it was started (in process, or the built binary with its memory
// watched), a normal client probing it meanwhile, and raw client frames.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

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

// probe publishes one message to key and waits (up to patience) for normal
// to receive it; it returns the latency. It does not call t.Fatal.
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
		left := patience - time.Since(start)
		if left <= 0 {
			return 0, fmt.Errorf("%s not received within %v", want, patience)
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
// of key) receives a message published now. The issue asks for 100 ms: the
// latency is logged, and flagged in the log (not failed, to stay
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
	code, err := c.closeOneOf(codes...)
	if err != nil {
		c.t.Fatalf("waiting for close %v: %v", codes, err)
	}
	return code
}

// closeOneOf is expectCloseOneOf, but returns a read error (a reset: a
// gateway that closes while bytes the client sent are still unread on its
// side resets the connection, and the close frame may be lost with it)
// instead of failing.
func (c *client) closeOneOf(codes ...int) (int, error) {
	c.t.Helper()
	for {
		_, err := c.next(patience)
		var ce *closeError
		if errors.As(err, &ce) {
			for _, code := range codes {
				if ce.Code == code {
					return code, nil
				}
			}
			c.t.Fatalf("closed with %d %q, want one of %v", ce.Code, ce.Reason, codes)
		}
		if err != nil {
			return 0, err
		}
	}
}

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
