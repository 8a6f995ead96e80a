// Package e2e holds wspubsub's end-to-end tests: a gateway (in-process, or
// the built binary) against a real redis-server and a real MongoDB-wire
// server started by internal/testenv.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/gateway"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

const demoKey = config.DemoKey

// stack is one gateway on real Redis and MongoDB.
type stack struct {
	t      *testing.T
	redis  *testenv.Service
	mongo  *testenv.Service
	rdb    *redis.Client
	keys   *mongo.Collection
	gw     *gateway.Gateway
	cfg    config.Serve
	args   []string
	cancel context.CancelFunc
	done   chan error
}

// newStack starts Redis, MongoDB and a gateway configured by args (extra
// serve flags). Keys given are inserted into MongoDB first.
func newStack(t *testing.T, args []string, keys ...string) *stack {
	t.Helper()
	return newStackOn(t, testenv.Redis(t), args, keys...)
}

// newServices is a stack without its gateway yet: MongoDB started, keys
// inserted, clients of both.
func newServices(t *testing.T, rsrv *testenv.Service, keys ...string) *stack {
	t.Helper()
	s := &stack{t: t, redis: rsrv, mongo: testenv.Mongo(t)}
	s.rdb = redis.NewClient(&redis.Options{Addr: s.redis.Addr()})
	t.Cleanup(func() { s.rdb.Close() })
	mc, err := mongo.Connect(options.Client().ApplyURI(s.mongo.URL()).SetServerSelectionTimeout(patience))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mc.Disconnect(context.Background()) })
	s.keys = mc.Database("myDB").Collection("myCollection")
	for _, k := range keys {
		s.addKey(k)
	}
	return s
}

// newStackOn is newStack on a Redis the test started (a durable one, say).
func newStackOn(t *testing.T, rsrv *testenv.Service, args []string, keys ...string) *stack {
	t.Helper()
	s := newServices(t, rsrv, keys...)
	base := []string{"--listen", "127.0.0.1:0", "--redis-url", s.redis.URL(), "--mongo-uri", s.mongo.URL(),
		"--shutdown-timeout", "5s", "--log-level", "debug"}
	s.startGateway(append(base, args...))
	return s
}

func (s *stack) startGateway(args []string) { s.startGatewayWith(args, gateway.Options{}) }

// startGatewayWith starts the gateway with opts (a store of the test's own,
// for example); its logger is the test's.
func (s *stack) startGatewayWith(args []string, opts gateway.Options) {
	s.t.Helper()
	s.launch(args, opts)
	s.waitReady()
}

// launch starts the gateway with opts and does not wait for it.
func (s *stack) launch(args []string, opts gateway.Options) {
	t := s.t
	t.Helper()
	s.args = args
	cfg, err := config.ParseServe(args, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	s.cfg = cfg
	opts.Logger = testenv.Logger(t)
	gw, err := gateway.New(cfg, opts)
	if err != nil {
		t.Fatalf("gateway: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.gw, s.cancel, s.done = gw, cancel, make(chan error, 1)
	go func() { s.done <- gw.Run(ctx) }()
	t.Cleanup(s.stop)
}

// stop shuts the gateway down gracefully and returns how long it took.
func (s *stack) stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	select {
	case err := <-s.done:
		if err != nil {
			s.t.Errorf("gateway Run: %v", err)
		}
	case <-time.After(patience):
		s.t.Errorf("gateway did not stop within %v", patience)
	}
	s.cancel = nil
}

// restartGateway stops the gateway gracefully and starts a new one on the
// same address, as a deploy would.
func (s *stack) restartGateway() {
	s.t.Helper()
	addr := s.gw.Addr().String()
	s.stop()
	s.startGateway(append(append([]string(nil), s.args...), "--listen", addr))
}

func (s *stack) addKey(k string) {
	s.t.Helper()
	if _, err := s.keys.InsertOne(context.Background(), bson.D{{Key: "_id", Value: k}}); err != nil {
		s.t.Fatalf("inserting key: %v", err)
	}
}

func (s *stack) url(query string) string {
	return "ws://" + s.gw.Addr().String() + s.cfg.Path + "?" + query
}

func (s *stack) httpURL(path string) string { return "http://" + s.gw.Addr().String() + path }

func (s *stack) waitReady() {
	s.t.Helper()
	waitReadyAt(s.t, s.gw.Addr().String())
}

// waitReadyAt waits until the gateway at addr answers /readyz with 200.
func waitReadyAt(t testing.TB, addr string) {
	t.Helper()
	eventually(t, 20*time.Second, "gateway ready", func() bool {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// publish sends raw on the inbound Redis channel.
func (s *stack) publish(raw string) {
	s.t.Helper()
	if err := s.rdb.Publish(context.Background(), s.cfg.Channel, raw).Err(); err != nil {
		s.t.Fatalf("redis publish: %v", err)
	}
}

// patience is how long a test waits for something that must happen (a
// message, a close, a metric). Only a loss or a hang takes that long, so a
// loaded or slow machine (CI runs these beside other packages, under the
// race detector) is never failed for being slow: how long things took is
// logged, never asserted.
const patience = 60 * time.Second

// eventually waits until cond holds. d is how long it takes on a healthy
// machine; the wait gives up only after patience if that is longer.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	d = max(d, patience)
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// client is a minimal browser-like WebSocket client: it answers pings.
type client struct {
	t    testing.TB
	c    net.Conn
	r    io.Reader
	pong bool
}

func dial(t testing.TB, url string, hdr http.Header) (*client, error) {
	t.Helper()
	d := ws.Dialer{Timeout: patience}
	if hdr != nil {
		d.Header = ws.HandshakeHeaderHTTP(hdr)
	}
	c, br, _, err := d.Dial(context.Background(), url)
	if err != nil {
		return nil, err
	}
	cl := &client{t: t, c: c, r: c, pong: true}
	if br != nil {
		cl.r = io.MultiReader(br, c)
	}
	t.Cleanup(func() { c.Close() })
	return cl, nil
}

func mustDial(t testing.TB, url string) *client {
	t.Helper()
	c, err := dial(t, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return c
}

// closeError is what next returns when the server closed the connection.
type closeError struct {
	Code   int
	Reason string
}

func (e *closeError) Error() string { return fmt.Sprintf("closed %d %q", e.Code, e.Reason) }

// next returns the next text message.
func (c *client) next(timeout time.Duration) (string, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(timeout))
	for {
		f, err := ws.ReadFrame(c.r)
		if err != nil {
			return "", err
		}
		switch f.Header.OpCode {
		case ws.OpText, ws.OpBinary:
			return string(f.Payload), nil
		case ws.OpPing:
			if c.pong {
				_ = wsutil.WriteClientMessage(c.c, ws.OpPong, f.Payload)
			}
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(f.Payload)
			_ = wsutil.WriteClientMessage(c.c, ws.OpClose, ws.NewCloseFrameBody(code, ""))
			_ = c.c.Close()
			return "", &closeError{int(code), reason}
		}
	}
}

func (c *client) expect(want string) {
	c.t.Helper()
	got, err := c.next(patience)
	if err != nil {
		c.t.Fatalf("waiting for %s: %v", want, err)
	}
	if got != want {
		c.t.Fatalf("got %s, want %s", got, want)
	}
}

func (c *client) expectClose(code int) {
	c.t.Helper()
	for {
		got, err := c.next(patience)
		var ce *closeError
		if errors.As(err, &ce) {
			if ce.Code != code {
				c.t.Fatalf("closed with %d %q, want %d", ce.Code, ce.Reason, code)
			}
			return
		}
		if err != nil {
			c.t.Fatalf("waiting for close %d: %v", code, err)
		}
		_ = got // messages before the close are allowed
	}
}

// expectNothing asserts no message arrives within d.
func (c *client) expectNothing(d time.Duration) {
	c.t.Helper()
	got, err := c.next(d)
	if err == nil {
		c.t.Fatalf("unexpected message %s", got)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("unexpected end: %v", err)
	}
}

func (c *client) send(text string) {
	c.t.Helper()
	if err := wsutil.WriteClientText(c.c, []byte(text)); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *client) close() {
	_ = wsutil.WriteClientMessage(c.c, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
	_ = c.c.Close()
}

func envelope(data string, keys ...string) string {
	return `{"recipients":["` + strings.Join(keys, `","`) + `"],"data":` + data + `}`
}
