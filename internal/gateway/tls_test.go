package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/ratelimit"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

// logLines is a slog.Handler keeping the messages logged at or above min.
type logLines struct {
	min   slog.Level
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Enabled(_ context.Context, lv slog.Level) bool { return lv >= l.min }
func (l *logLines) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, r.Message)
	return nil
}
func (l *logLines) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logLines) WithGroup(string) slog.Handler      { return l }

func (l *logLines) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

// runTLS runs a demo-mode gateway (in-process broker, demo key) serving
// TLS with the files given.
func runTLS(t *testing.T, certFile, keyFile string) *Gateway {
	t.Helper()
	cfg, err := config.ParseServe([]string{"--listen", "127.0.0.1:0", "--shutdown-timeout", "5s",
		"--tls-cert", certFile, "--tls-key", keyFile}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(cfg, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(time.Minute):
			t.Errorf("gateway did not stop")
		}
	})
	return g
}

// TestTLSPlainRequestsGet400: plain HTTP, and a plain WebSocket handshake,
// on the TLS port are answered 400 with a body naming the right schemes,
// and counted; a TLS request on the same port is served.
func TestTLSPlainRequestsGet400(t *testing.T) {
	ca := testenv.NewCA(t)
	certFile, keyFile := ca.Issue(t, t.TempDir(), 2)
	g := runTLS(t, certFile, keyFile)
	addr := g.Addr().String()

	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("plain GET: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || string(body) != notTLSBody {
		t.Fatalf("plain GET: %d %q, want 400 %q", resp.StatusCode, body, notTLSBody)
	}

	_, _, _, err = ws.Dialer{Timeout: time.Minute}.Dial(context.Background(), "ws://"+addr+"/websocket?"+config.DemoKey)
	var status ws.StatusError
	if !errors.As(err, &status) || int(status) != http.StatusBadRequest {
		t.Fatalf("plain WebSocket dial: %v, want status 400", err)
	}
	if got := testutil.ToFloat64(g.metrics.Rejections.WithLabelValues(metrics.RejectNotTLS)); got != 2 {
		t.Fatalf("not_tls rejections = %v, want 2", got)
	}

	c := &http.Client{Transport: &http.Transport{TLSClientConfig: ca.ClientConfig()}}
	resp, err = c.Get("https://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("https GET: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("https GET: %d", resp.StatusCode)
	}
}

// TestTLSGarbageIsClosed: bytes that are neither TLS nor HTTP
// get the socket closed (no answer, no hang).
func TestTLSGarbageIsClosed(t *testing.T) {
	ca := testenv.NewCA(t)
	certFile, keyFile := ca.Issue(t, t.TempDir(), 2)
	g := runTLS(t, certFile, keyFile)
	c, err := net.Dial("tcp", g.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{0x00, 0x01, 0x02, 0xff}); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second)) // a bound, not an expectation
	got, err := io.ReadAll(c)
	if len(got) != 0 || isTimeout(err) {
		t.Fatalf("garbage: read %q, %v; want the socket closed without an answer", got, err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// servedSerial returns the serial number of the certificate a new
// handshake presents.
func servedSerial(t *testing.T, addr string, ca *testenv.CA) int64 {
	t.Helper()
	c, err := tls.Dial("tcp", addr, ca.ClientConfig())
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// TestTLSRotation: new files are presented by the next handshakes without
// a restart.
func TestTLSRotation(t *testing.T) {
	ca := testenv.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.Issue(t, dir, 2)
	g := runTLS(t, certFile, keyFile)
	addr := g.Addr().String()
	if got := servedSerial(t, addr, ca); got != 2 {
		t.Fatalf("serial %d, want 2", got)
	}
	ca.Issue(t, dir, 3)
	deadline := time.Now().Add(30 * time.Second)
	for servedSerial(t, addr, ca) != 3 {
		if time.Now().After(deadline) {
			t.Fatal("the rotated certificate (serial 3) was not presented within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCertReloaderKeepsOldPairOnBrokenFiles: a broken new pair keeps the
// loaded one, is logged once however many handshakes see it, and a fixed
// pair is then loaded. (The once-a-second check is skipped by resetting
// checked.)
func TestCertReloaderKeepsOldPairOnBrokenFiles(t *testing.T) {
	ca := testenv.NewCA(t)
	dir := t.TempDir()
	certFile, keyFile := ca.Issue(t, dir, 2)
	lines := &logLines{min: slog.LevelInfo}
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: slog.New(lines)}
	if err := r.load(); err != nil {
		t.Fatal(err)
	}
	serial := func() int64 {
		r.mu.Lock()
		r.checked = time.Time{}
		r.mu.Unlock()
		c, err := r.getCertificate(nil)
		if err != nil || c == nil {
			t.Fatalf("getCertificate: %v", err)
		}
		return c.Leaf.SerialNumber.Int64()
	}
	if err := os.WriteFile(certFile, []byte("-----BEGIN CERTIFICATE-----\nbroken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := serial(); got != 2 {
			t.Fatalf("with broken files: serial %d, want the old 2", got)
		}
	}
	if n := lines.count("TLS certificate not reloaded"); n != 1 {
		t.Fatalf("%d error lines for one broken pair, want 1", n)
	}
	ca.Issue(t, dir, 4)
	if got := serial(); got != 4 {
		t.Fatalf("after the fix: serial %d, want 4", got)
	}
	if n := lines.count("TLS certificate reloaded"); n != 1 {
		t.Fatalf("%d reload lines, want 1", n)
	}
}

func TestLooksLikeHTTP(t *testing.T) {
	for in, want := range map[string]bool{"GET /": true, "POST": true, "OPTIONS ": true, "\x16\x03\x01": false,
		"get /": false, " GET": false, "": false, "PRI * HTTP/2.0": true} {
		if got := looksLikeHTTP([]byte(in)); got != want {
			t.Errorf("looksLikeHTTP(%q) = %v, want %v", in, got, want)
		}
	}
}

// TestTLSUsage: --tls-cert and --tls-key go together.
func TestTLSUsage(t *testing.T) {
	for _, args := range [][]string{{"--tls-cert", "c.pem"}, {"--tls-key", "k.pem"}} {
		_, err := config.ParseServe(args, func(string) string { return "" }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--tls-cert and --tls-key go together") {
			t.Errorf("%v: %v", args, err)
		}
	}
}

// TestTLSWebSocketDelivery: wss:// without Redis — a burst published over
// https (HTTP/2) arrives whole and in order on a TLS WebSocket, whose
// writes go through crypto/tls on the slow lane's goroutine.
func TestTLSWebSocketDelivery(t *testing.T) {
	ca := testenv.NewCA(t)
	certFile, keyFile := ca.Issue(t, t.TempDir(), 2)
	g := runTLS(t, certFile, keyFile)
	addr := g.Addr().String()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: ca.ClientConfig(), ForceAttemptHTTP2: true}}
	defer hc.CloseIdleConnections()

	d := ws.Dialer{Timeout: time.Minute, TLSConfig: ca.ClientConfig()}
	c, br, _, err := d.Dial(context.Background(), "wss://"+addr+"/websocket?"+config.DemoKey)
	if err != nil {
		t.Fatalf("wss dial: %v", err)
	}
	defer c.Close()
	var r io.Reader = c
	if br != nil {
		r = io.MultiReader(br, c)
	}
	next := func() string {
		t.Helper()
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		for {
			f, err := ws.ReadFrame(r)
			if err != nil {
				t.Fatalf("reading: %v", err)
			}
			if f.Header.OpCode == ws.OpText {
				return string(f.Payload)
			}
		}
	}
	if err := wsutil.WriteClientText(c, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "heartbeat message" {
		t.Fatalf("got %q, want the heartbeat reply", got)
	}
	const n = 200
	for i := range n {
		body := fmt.Sprintf(`{"recipients":[%q],"data":{"n":%d}}`, config.DemoKey, i)
		resp, err := hc.Post("https://"+addr+"/publish", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || resp.ProtoMajor != 2 {
			t.Fatalf("publish %d: %d over %s", i, resp.StatusCode, resp.Proto)
		}
	}
	for i := range n {
		if got, want := next(), fmt.Sprintf(`{"data":{"n":%d}}`, i); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
}

// TestTLSHandshakePanicDropsOneSocket: a panic in one connection's
// handshake goroutine (here the certificate callback, for one server
// name) is recovered: one error line, rejections{internal_error}, that
// socket closed; the listener goes on serving handshakes.
func TestTLSHandshakePanicDropsOneSocket(t *testing.T) {
	ca := testenv.NewCA(t)
	certFile, keyFile := ca.Issue(t, t.TempDir(), 2)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &logLines{min: slog.LevelError}
	log := slog.New(logs)
	g := &Gateway{log: log, metrics: metrics.New(), sampled: ratelimit.NewSampled(log, 5, 50)}
	cfg := &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if hello.ServerName == "bomb.example" {
			panic("certificate callback bug")
		}
		return &cert, nil
	}}
	l := &tlsListener{ln: ln, cfg: cfg, g: g, ch: make(chan net.Conn), done: make(chan struct{})}
	go l.run()
	t.Cleanup(func() { _ = ln.Close() })

	bad := ca.ClientConfig()
	bad.ServerName = "bomb.example"
	d := &net.Dialer{Timeout: time.Minute}
	if c, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), bad); err == nil {
		c.Close()
		t.Fatal("handshake that panicked on the server completed")
	}
	if got := testutil.ToFloat64(g.metrics.Rejections.WithLabelValues(metrics.RejectInternal)); got != 1 {
		t.Fatalf("rejections{internal_error} = %v, want 1", got)
	}
	if n := logs.count("TLS handshake failed: internal error"); n != 1 {
		t.Fatalf("%d internal-error lines, want 1", n)
	}

	good := ca.ClientConfig()
	good.ServerName = "localhost"
	c, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), good)
	if err != nil {
		t.Fatalf("handshake after the panic: %v", err)
	}
	defer c.Close()
	sc, err := l.Accept()
	if err != nil {
		t.Fatalf("Accept after the panic: %v", err)
	}
	defer sc.Close()
	if _, err := sc.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Minute)) // a bound, not an expectation
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("read %q: %v", buf, err)
	}
}
