package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// fakeRedis accepts one connection, passes the client's first command
// (SUBSCRIBE) on the channel returned and serves script: bytes to write,
// or nil to read the client's next command (passed on too). Then it holds
// the connection until the client closes it.
func fakeRedis(t *testing.T, script ...[]byte) (*redis.Options, <-chan []string) {
	return fakeRedisThen(t, true, script...)
}

// fakeRedisThen is fakeRedis that closes the connection after the script
// unless hold.
func fakeRedisThen(t *testing.T, hold bool, script ...[]byte) (*redis.Options, <-chan []string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cmds := make(chan []string, 16)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		cmds <- readCommand(r)
		for _, s := range script {
			if s == nil {
				cmds <- readCommand(r)
				continue
			}
			if _, err := c.Write(s); err != nil {
				return
			}
		}
		if hold {
			io.Copy(io.Discard, r)
		}
	}()
	return redis.NewClient(&redis.Options{Addr: ln.Addr().String(), DialTimeout: patience}).Options(), cmds
}

// readCommand reads one RESP array of bulk strings (nil at EOF).
func readCommand(r *bufio.Reader) []string {
	var n int
	if _, err := fmt.Fscanf(r, "*%d\r\n", &n); err != nil {
		return nil
	}
	args := make([]string, n)
	for i := range args {
		var l int
		if _, err := fmt.Fscanf(r, "$%d\r\n", &l); err != nil {
			return nil
		}
		b := make([]byte, l+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil
		}
		args[i] = string(b[:l])
	}
	return args
}

func bulk(s string) string { return fmt.Sprintf("$%d\r\n%s\r\n", len(s), s) }

func reply(parts ...string) []byte {
	return []byte(fmt.Sprintf("*%d\r\n", len(parts)) + strings.Join(parts, ""))
}

// TestSubConnReadsSubscribeMode: confirmations, messages (one larger than
// the reader's buffer), a pong and replies the loop ignores, in order.
func TestSubConnReadsSubscribeMode(t *testing.T) {
	large := strings.Repeat("x", subReadBuf+1000)
	opt, cmds := fakeRedis(t,
		reply(bulk("subscribe"), bulk("in"), ":1\r\n"),
		reply(bulk("subscribe"), bulk("rec"), ":2\r\n"),
		reply(bulk("message"), bulk("in"), bulk(`{"a":1}`)),
		reply(bulk("message"), bulk("rec"), bulk(large)),
		reply(bulk("message"), bulk("elsewhere"), bulk("x")),
		reply(bulk("pong"), bulk("")),
		reply(bulk("unsubscribe"), bulk("in"), ":1\r\n"),
		reply(bulk("message"), bulk("in"), "$0\r\n\r\n"),
	)
	s := newSubConn(opt, time.Minute, "in", "rec")
	defer s.close()
	want := []subEvent{
		{kind: subConfirmed, channel: 0}, {kind: subConfirmed, channel: 1},
		{kind: subMessage, channel: 0, payload: []byte(`{"a":1}`)},
		{kind: subMessage, channel: 1, payload: []byte(large)},
		{kind: subOther, channel: -1, payload: []byte("x")},
		{kind: subPong, channel: -1, payload: []byte{}},
		{kind: subOther, channel: 0},
		{kind: subMessage, channel: 0, payload: []byte{}},
	}
	for i, w := range want {
		ev, err := s.receive(context.Background())
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if ev.kind != w.kind || ev.channel != w.channel || !bytes.Equal(ev.payload, w.payload) {
			t.Fatalf("event %d: got kind %d channel %d payload %.20q, want %d %d %.20q", i, ev.kind, ev.channel, ev.payload, w.kind, w.channel, w.payload)
		}
	}
	if got := <-cmds; strings.Join(got, " ") != "SUBSCRIBE in rec" {
		t.Fatalf("first command %q", got)
	}
}

// A stream that is not what subscribe mode sends is an error and drops the
// connection; it never panics or returns a payload past what was read.
func TestSubConnMalformedStreamIsAnError(t *testing.T) {
	for _, bad := range []string{
		"-NOAUTH Authentication required.\r\n",
		"+OK\r\n",
		"*0\r\n",
		"*9\r\n",
		"*x\r\n",
		"*3\r\n:1\r\n",
		"*3\r\n$7\r\nmessage\r\n$2\r\nin\r\n$5\r\nab\r\n",
		"*3\r\n$7\r\nmessage\r\n$2\r\nin\r\n$999999999999\r\n",
		"*3\r\n$7\r\nmessage\r\n$2\r\nin\r\n$-2\r\n",
		"*3\r\n$7\r\nmessage\r\n$2\r\nin\r\n$3\r\nabcXY",
		"*3\n",
		"*3\r\n$7\r\nmess", // then EOF
		"*1\r\n$" + strings.Repeat("9", subReadBuf) + "\r\n",
	} {
		t.Run(fmt.Sprintf("%.24q", bad), func(t *testing.T) {
			opt, _ := fakeRedisThen(t, false, []byte(bad)) // then EOF: a truncated reply fails on it
			s := newSubConn(opt, time.Minute, "in")
			defer s.close()
			for {
				ev, err := s.receive(context.Background())
				if err != nil {
					if s.conn != nil {
						t.Fatal("the connection was kept after a malformed reply")
					}
					return
				}
				if ev.kind == subMessage {
					t.Fatalf("a message out of a malformed stream: %q", ev.payload)
				}
			}
		})
	}
}

// FuzzSubConnStream: whatever Redis (or something posing as it) sends, a
// receive returns an event or an error, never panics, and a message's
// payload is one the stream announced.
func FuzzSubConnStream(f *testing.F) {
	f.Add([]byte("*3\r\n$7\r\nmessage\r\n$2\r\nin\r\n$7\r\n{\"a\":1}\r\n"))
	f.Add([]byte("*3\r\n$9\r\nsubscribe\r\n$2\r\nin\r\n:1\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n"))
	f.Add([]byte("-ERR x\r\n"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		s := newSubConn(nil, time.Minute, "in")
		s.r = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(stream), errReader{}), 16)
		s.conn = nopConn{}
		for range len(stream) + 1 {
			ev, err := s.receive(context.Background())
			if err != nil {
				return
			}
			if ev.kind == subMessage && !bytes.Contains(stream, ev.payload) {
				t.Fatalf("payload %q not in the stream", ev.payload)
			}
		}
	})
}

// errReader ends the fuzzed stream with a non-timeout error.
type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// nopConn stands in for the socket when the reader is fed directly.
type nopConn struct{ net.Conn }

func (nopConn) SetReadDeadline(time.Time) error { return nil }
func (nopConn) Close() error                    { return nil }

// TestSubConnUnansweredPingDrops: a quiet spell is a timeout that keeps the
// connection; the PING sent then is answered (the connection stays) or,
// on a server that has gone silent (half-open), the next quiet spell is
// errNoPong and the connection is dropped.
func TestSubConnUnansweredPingDrops(t *testing.T) {
	opt, cmds := fakeRedis(t, nil, reply(bulk("pong"), bulk("")), nil) // answers the first PING only
	// A short timeout only where nothing can arrive (the quiet spells); a
	// long one where the pong is awaited, so a slow machine cannot turn
	// the answer into a timeout.
	s := newSubConn(opt, 50*time.Millisecond, "in")
	defer s.close()
	timeout := func(d time.Duration) { s.timeout, s.setAt = d, time.Time{} }
	isTimeout := func(err error) bool {
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout()
	}
	if _, err := s.receive(context.Background()); !isTimeout(err) {
		t.Fatalf("quiet connection: %v, want a timeout", err)
	}
	if err := s.ping(); err != nil {
		t.Fatal(err)
	}
	<-cmds // SUBSCRIBE
	if got := <-cmds; strings.Join(got, " ") != "PING" {
		t.Fatalf("got %q, want PING", got)
	}
	timeout(time.Minute)
	if ev, err := s.receive(context.Background()); err != nil || ev.kind != subPong {
		t.Fatalf("after PING: %+v, %v; want the pong", ev, err)
	}
	timeout(50 * time.Millisecond)
	if _, err := s.receive(context.Background()); !isTimeout(err) {
		t.Fatalf("quiet again: %v, want a timeout", err)
	}
	if err := s.ping(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.receive(context.Background()); !isTimeout(err) {
		t.Fatalf("PING unanswered: %v, want a timeout", err)
	}
	if err := s.ping(); !errors.Is(err, errNoPong) || s.conn != nil {
		t.Fatalf("second quiet spell with the PING unanswered: %v (connection kept: %v), want errNoPong and a drop", err, s.conn != nil)
	}
}

// TestSubConnAuth: a Redis with a password subscribes with the right one
// and refuses a wrong one; the password never shows in the error.
func TestSubConnAuth(t *testing.T) {
	srv := testenv.RedisWith(t, "--appendonly", "no", "--requirepass", "s3cret-pw")
	for _, tc := range []struct{ url, wantErr string }{
		{"redis://:s3cret-pw@" + srv.Addr(), ""},
		{"redis://default:s3cret-pw@" + srv.Addr(), ""},
		{"redis://:wrong-pw@" + srv.Addr(), "authenticating to Redis"},
		{"redis://" + srv.Addr(), "NOAUTH"},
	} {
		c, err := NewClient(tc.url, false, 0)
		if err != nil {
			t.Fatal(err)
		}
		s := newSubConn(c.(*redis.Client).Options(), time.Minute, "in")
		ev, err := s.receive(context.Background())
		s.close()
		c.Close()
		switch {
		case tc.wantErr == "" && (err != nil || ev.kind != subConfirmed):
			t.Errorf("%s: %+v, %v; want the subscription confirmed", redactURL(tc.url), ev, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: %v, want an error with %q", redactURL(tc.url), err, tc.wantErr)
		case err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "wrong-pw")):
			t.Errorf("the error shows the password: %v", err)
		}
	}
}

// A timeout while connecting (dial, AUTH unanswered, SUBSCRIBE written too
// slowly) is logged as what it is, not taken for a quiet channel and
// pinged. Here: a server that accepts and never answers AUTH (a hung
// Redis, a proxy with no backend).
func TestRedisConnectTimeoutLogsItsCause(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	var buf syncBuffer
	b, err := NewRedis(RedisConfig{URL: "redis://:pw@" + ln.Addr().String(), Inbound: "in",
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, func([]byte) {}) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the cannot-reach line", func() bool { return strings.Contains(buf.String(), "cannot reach Redis") })
	if log := buf.String(); strings.Contains(log, "use of closed network connection") || !strings.Contains(log, "timeout") {
		t.Fatalf("the log hides the cause (a timeout: here AUTH unanswered):\n%s", log)
	}
}

// Broker.Close "releases connections; Run returns soon after": the
// subscription, dialled apart from the client's pools, ends too.
func TestRedisCloseEndsTheSubscription(t *testing.T) {
	srv := testenv.Redis(t)
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, func([]byte) {}) }()
	defer func() { cancel(); <-done }()
	waitReady(t, b)
	b.Close()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	waitFor(t, "no subscriber left, not ready", func() bool {
		n, err := rdb.PubSubNumSub(context.Background(), "in").Result()
		return err == nil && n["in"] == 0 && !b.Ready()
	})
	select {
	case <-done:
		done <- nil // for the deferred wait
	case <-time.After(time.Minute):
		t.Fatal("Run still running a minute after Close")
	}
}

// A reply shorter than Redis's is neither a message nor a confirmation (a
// broken peer must not make RunSplit ready with a channel never
// subscribed).
func TestSubConnShortReplyIsNotAnEvent(t *testing.T) {
	opt, _ := fakeRedis(t,
		reply(bulk("message")),
		reply(bulk("subscribe")),
	)
	s := newSubConn(opt, time.Minute, "in", "rec")
	defer s.close()
	for i := range 2 {
		ev, err := s.receive(context.Background())
		if err == nil && (ev.kind == subMessage || ev.kind == subConfirmed) {
			t.Errorf("reply %d (*1): kind %d on channel %d, want subOther or an error", i, ev.kind, ev.channel)
		}
	}
}

// The buffer of one payload larger than subKeepBig is not kept once the
// next receive starts.
func TestSubConnReleasesALargePayloadsBuffer(t *testing.T) {
	const large = 8 << 20
	script := [][]byte{reply(bulk("message"), bulk("in"), bulk(strings.Repeat("x", large)))}
	for range 100 {
		script = append(script, reply(bulk("message"), bulk("in"), bulk(`{"data":1}`)))
	}
	opt, _ := fakeRedis(t, script...)
	s := newSubConn(opt, time.Minute, "in")
	defer s.close()
	for i := range len(script) {
		if ev, err := s.receive(context.Background()); err != nil || ev.kind != subMessage {
			t.Fatalf("event %d: %+v %v", i, ev.kind, err)
		}
	}
	if cap(s.big) >= large {
		t.Fatalf("after 100 small messages the %d-byte buffer of one large one is still held (cap %d)", large, cap(s.big))
	}
}

// A payload's capacity ends with it: a handler that appends to it (without
// keeping it, e.g. append(p, '\n') for a log line) copies, and does not
// write over the replies still unread in the reader's buffer.
func TestSubConnPayloadAppendCopies(t *testing.T) {
	opt, _ := fakeRedis(t, []byte(string(reply(bulk("message"), bulk("in"), bulk(`{"a":1}`)))+
		string(reply(bulk("message"), bulk("in"), bulk(`{"b":2}`)))))
	s := newSubConn(opt, patience, "in") // bounds the wait on a desynchronised stream
	defer s.close()
	ev, err := s.receive(context.Background())
	if err != nil || ev.kind != subMessage {
		t.Fatalf("%+v %v", ev, err)
	}
	first := ev.payload
	_ = append(first, "\n-- appended by a handler that keeps nothing --\n"...)
	ev, err = s.receive(context.Background())
	if err != nil || ev.kind != subMessage || string(ev.payload) != `{"b":2}` {
		t.Fatalf("second message after a handler appended to the first (len %d, cap %d): kind %d %q, %v",
			len(first), cap(first), ev.kind, ev.payload, err)
	}
}

// ?client_name= in --redis-url names the subscription connection too.
func TestSubConnClientName(t *testing.T) {
	srv := testenv.Redis(t)
	c, err := NewClient(srv.URL()+"?client_name=gw-7", false, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := newSubConn(c.(*redis.Client).Options(), time.Minute, "in")
	defer s.close()
	if ev, err := s.receive(context.Background()); err != nil || ev.kind != subConfirmed {
		t.Fatalf("%+v, %v; want the subscription confirmed", ev, err)
	}
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " name=gw-7 ") && strings.Contains(line, " sub=1 ") {
			return
		}
	}
	t.Fatalf("no subscribed connection named gw-7 in CLIENT LIST:\n%s", list)
}
