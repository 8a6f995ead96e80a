package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// subConn is the SUBSCRIBE connection of the unrouted mode, read without
// go-redis. Every inbound message passes through it on one goroutine, and
// go-redis's PubSub spends ~0.8 µs and 4 allocations on each (a read
// deadline and time.Now per message, a Cmd, strings for the channel and
// payload, a Message): a quarter of the gateway's CPU under a burst, on
// the goroutine that bounds its throughput. This reads the three-element
// replies of RESP2's subscribe mode straight out of a bufio.Reader, the
// payload a view into its buffer (valid until the next receive: the
// Handler contract), and sets the read deadline at most once a second.
// Dialling (TLS included) and AUTH use the client's options, so --redis-url
// means the same here as everywhere else; Pub/Sub ignores the database.
//
// Like go-redis's PubSub it reconnects lazily: after an error the next
// receive dials and subscribes again, and the caller paces the attempts.
type subConn struct {
	opt      *redis.Options
	channels []string
	timeout  time.Duration // a receive with nothing to read for this long returns errQuiet

	mu     sync.Mutex // guards conn against close from another goroutine
	conn   net.Conn
	closed bool

	r       *bufio.Reader
	big     []byte    // a payload that does not fit in r's buffer
	setAt   time.Time // when the read deadline was last moved
	pinged  bool      // a PING went out and nothing came back since
	scratch []byte    // a command being written
}

// subEvent is one reply of subscribe mode.
type subEvent struct {
	kind    subKind
	channel int    // index in channels (subscribe, message)
	payload []byte // message: valid until the next receive
}

type subKind uint8

const (
	subOther     subKind = iota // a reply the loop has no use for (unsubscribe, a message on a channel not asked for)
	subConfirmed                // "subscribe": one channel confirmed
	subMessage                  // "message"
	subPong                     // the answer to PING
)

// subReadBuf is the reader's buffer: payloads up to it are not copied.
const subReadBuf = 64 << 10

// subKeepBig: a buffer for payloads larger than subReadBuf is kept for the
// next one only up to this size.
const subKeepBig = 1 << 20

// subMaxBulk bounds a bulk string's announced length (Redis's own
// proto-max-bulk-len): a longer one means the stream is not RESP.
const subMaxBulk = 512 << 20

// errNoPong: the connection sent nothing, not even the answer to a PING,
// for two timeouts.
var errNoPong = errors.New("redis subscription: no answer to PING")

// errQuiet wraps the timeout of a receive that found nothing at all to
// read: the connection is kept, and the caller may ping. Any other timeout
// (dialling, AUTH, half a reply) is an error like the rest.
var errQuiet = errors.New("redis subscription: quiet")

func newSubConn(opt *redis.Options, timeout time.Duration, channels ...string) *subConn {
	return &subConn{opt: opt, channels: channels, timeout: timeout}
}

// close ends the connection for good; a receive blocked on it returns.
func (s *subConn) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.conn != nil {
		s.conn.Close()
	}
}

// isClosed reports whether close was called.
func (s *subConn) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// drop closes the current connection; the next receive dials anew.
func (s *subConn) drop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}

// connect dials, authenticates and subscribes to every channel (the
// confirmations arrive as events).
func (s *subConn) connect(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, s.opt.DialTimeout)
	defer cancel()
	c, err := s.opt.Dialer(dctx, s.opt.Network, s.opt.Addr)
	if err != nil {
		return fmt.Errorf("dialling Redis: %w", err)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return net.ErrClosed
	}
	s.conn = c
	s.mu.Unlock()
	if s.r == nil {
		s.r = bufio.NewReaderSize(c, subReadBuf)
	} else {
		s.r.Reset(c)
	}
	s.setAt, s.pinged = time.Time{}, false
	if err := s.auth(); err != nil {
		s.drop()
		return err
	}
	if name := s.opt.ClientName; name != "" {
		// ?client_name= in --redis-url names every connection, as
		// go-redis does its own (CLIENT LIST shows who is subscribed).
		if err := s.call("CLIENT", "SETNAME", name); err != nil {
			s.drop()
			return fmt.Errorf("naming the Redis connection: %w", err)
		}
	}
	args := append([]string{"SUBSCRIBE"}, s.channels...)
	if err := s.command(args...); err != nil {
		s.drop()
		return fmt.Errorf("subscribing: %w", err)
	}
	return nil
}

// auth sends AUTH when --redis-url carries a password (the options come
// from NewClient: a user and a password, no credentials provider), as
// go-redis's HELLO does: the two-argument form, which a passwordless Redis
// 6+ accepts, falling back to the one-argument form of Redis 5.
func (s *subConn) auth() error {
	user, pass := s.opt.Username, s.opt.Password
	if pass == "" {
		return nil
	}
	if user == "" {
		user = "default"
	}
	err := s.call("AUTH", user, pass)
	if err != nil && strings.Contains(err.Error(), "wrong number of arguments") && user == "default" {
		err = s.call("AUTH", pass)
	}
	if err != nil && (strings.Contains(err.Error(), "without any password configured") ||
		strings.Contains(err.Error(), "no password is set")) {
		err = nil // a Redis without a password: go-redis connects too
	}
	if err != nil {
		return fmt.Errorf("authenticating to Redis: %w", err)
	}
	return nil
}

// call sends one command of the handshake and reads its +OK.
func (s *subConn) call(args ...string) error {
	if err := s.command(args...); err != nil {
		return err
	}
	s.conn.SetReadDeadline(time.Now().Add(s.opt.DialTimeout))
	line, err := s.line()
	if err != nil {
		return err
	}
	if line[0] != '+' {
		return errors.New(string(bytes.TrimPrefix(line, []byte("-"))))
	}
	return nil
}

// command writes one command as a RESP array of bulk strings.
func (s *subConn) command(args ...string) error {
	b := AppendArray(s.scratch[:0], len(args))
	for _, a := range args {
		b = AppendBulk(b, a)
	}
	s.scratch = b
	s.conn.SetWriteDeadline(time.Now().Add(max(s.opt.WriteTimeout, time.Second)))
	_, err := s.conn.Write(b)
	return err
}

// AppendArray appends the header of a RESP array of n elements to b: a
// Redis command is one of bulk strings (AppendBulk).
func AppendArray(b []byte, n int) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, "\r\n"...)
}

// AppendBulk appends s as a RESP bulk string to b.
func AppendBulk[T string | []byte](b []byte, s T) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, "\r\n"...)
	b = append(b, s...)
	return append(b, "\r\n"...)
}

// ping asks Redis for a sign of life after a quiet timeout; a second quiet
// timeout with the PING unanswered is errNoPong (the connection is dropped:
// a half-open connection otherwise stays silent forever).
func (s *subConn) ping() error {
	if s.conn == nil {
		return net.ErrClosed
	}
	if s.pinged {
		s.drop()
		return errNoPong
	}
	if err := s.command("PING"); err != nil {
		s.drop()
		return fmt.Errorf("pinging Redis: %w", err)
	}
	s.pinged = true
	return nil
}

// receive returns the next reply, connecting first if needed. Nothing at
// all for s.timeout is errQuiet and leaves the connection up: the caller
// may ping. Any other error drops it.
func (s *subConn) receive(ctx context.Context) (subEvent, error) {
	if cap(s.big) > subKeepBig {
		s.big = nil // the previous payload was huge: its use is over
	}
	if s.conn == nil {
		if err := s.connect(ctx); err != nil {
			return subEvent{}, err
		}
	}
	if now := time.Now(); now.Sub(s.setAt) > time.Second {
		// The deadline moves at most once a second: a quiet spell is
		// noticed after timeout-1s to timeout.
		if err := s.conn.SetReadDeadline(now.Add(s.timeout)); err != nil {
			s.drop()
			return subEvent{}, err
		}
		s.setAt = now
	}
	if _, err := s.r.Peek(1); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && s.r.Buffered() == 0 {
			s.setAt = time.Time{} // the deadline has passed: move it on the next receive
			return subEvent{}, fmt.Errorf("%w: %w", errQuiet, err)
		}
		s.drop()
		return subEvent{}, err
	}
	ev, err := s.event()
	if err != nil {
		s.drop()
		return subEvent{}, err
	}
	s.pinged = false
	return ev, nil
}

// event reads one reply: an array of bulk strings and integers.
func (s *subConn) event() (subEvent, error) {
	line, err := s.line()
	if err != nil {
		return subEvent{}, err
	}
	switch line[0] {
	case '-':
		return subEvent{}, fmt.Errorf("redis: %s", line[1:])
	case '*':
	default:
		return subEvent{}, fmt.Errorf("redis subscription: unexpected reply %.40q", line)
	}
	n, err := strconv.Atoi(string(line[1:]))
	if err != nil || n < 1 || n > 4 {
		return subEvent{}, fmt.Errorf("redis subscription: unexpected array %.40q", line)
	}
	kind, err := s.bulk()
	if err != nil {
		return subEvent{}, err
	}
	ev := subEvent{channel: -1}
	switch string(kind) { // compared before the next read moves the buffer
	case "message":
		ev.kind = subMessage
	case "subscribe":
		ev.kind = subConfirmed
	case "pong":
		ev.kind = subPong
	}
	for k := 1; k < n; k++ {
		v, err := s.element()
		if err != nil {
			return subEvent{}, err
		}
		switch k {
		case 1: // the channel, compared before the next read moves the buffer
			for i, c := range s.channels {
				if string(v) == c {
					ev.channel = i
					break
				}
			}
		case 2:
			ev.payload = v
		}
	}
	// Only the shapes Redis sends count: a message or a confirmation has
	// three elements and a channel asked for, a pong two.
	switch {
	case ev.kind == subMessage && (n != 3 || ev.channel < 0),
		ev.kind == subConfirmed && (n != 3 || ev.channel < 0),
		ev.kind == subPong && n != 2:
		ev.kind = subOther
	}
	return ev, nil
}

// element reads a bulk string (its bytes) or an integer (nil).
func (s *subConn) element() ([]byte, error) {
	b, err := s.r.Peek(1)
	if err != nil {
		return nil, err
	}
	if b[0] == ':' {
		_, err := s.line()
		return nil, err
	}
	return s.bulk()
}

// bulk reads "$<n>\r\n<n bytes>\r\n"; the bytes are a view into the reader's
// buffer, or into s.big when they do not fit.
func (s *subConn) bulk() ([]byte, error) {
	line, err := s.line()
	if err != nil {
		return nil, err
	}
	if line[0] != '$' {
		return nil, fmt.Errorf("redis subscription: expected a bulk string, got %.40q", line)
	}
	n, err := strconv.Atoi(string(line[1:]))
	if err != nil || n < -1 || n > subMaxBulk {
		return nil, fmt.Errorf("redis subscription: bad bulk length %.40q", line)
	}
	if n == -1 {
		return nil, nil
	}
	var b []byte
	if n+2 <= s.r.Size() {
		if b, err = s.r.Peek(n + 2); err != nil {
			return nil, noEOF(err)
		}
		s.r.Discard(n + 2)
	} else {
		if cap(s.big) < n+2 {
			s.big = make([]byte, n+2)
		}
		b = s.big[:n+2]
		if _, err := io.ReadFull(s.r, b); err != nil {
			return nil, noEOF(err)
		}
	}
	if b[n] != '\r' || b[n+1] != '\n' {
		return nil, errors.New("redis subscription: bulk string not ended by CRLF")
	}
	return b[:n:n], nil // an append copies: it must not write over the replies still unread
}

// line reads one CRLF-ended line (without it, never empty).
func (s *subConn) line() ([]byte, error) {
	l, err := s.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, errors.New("redis subscription: line too long")
		}
		return nil, noEOF(err)
	}
	if len(l) < 3 || l[len(l)-2] != '\r' {
		return nil, fmt.Errorf("redis subscription: malformed line %.40q", l)
	}
	return l[:len(l)-2], nil
}

// noEOF: an EOF in the middle of a reply is an unexpected one.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
