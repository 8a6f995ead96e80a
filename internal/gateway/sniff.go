package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// sniffer sits in front of net/http: it peeks at each new connection's
// first request and hands WebSocket upgrades of the client path straight to
// the transport (gobwas reads them with pooled buffers, leaving no garbage
// per connection), and everything else — health checks, EventSource,
// polls, the page — to net/http through httpLn.
type sniffer struct {
	g      *Gateway
	ln     net.Listener
	httpLn *chanListener
	pool   sync.Pool // *bufio.Reader, 4 KB
}

func newSniffer(g *Gateway, ln net.Listener) *sniffer {
	s := &sniffer{g: g, ln: ln, httpLn: &chanListener{addr: ln.Addr(), ch: make(chan net.Conn), done: make(chan struct{})}}
	s.pool.New = func() any { return bufio.NewReaderSize(nil, 4096) }
	return s
}

// run accepts until the listener is closed.
func (s *sniffer) run() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				s.httpLn.Close()
				return
			}
			time.Sleep(5 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		go s.sniff(c)
	}
}

func (s *sniffer) sniff(c net.Conn) {
	br := s.pool.Get().(*bufio.Reader)
	br.Reset(c)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	ws := isUpgradeHead(br, s.g.cfg.Path)
	_ = c.SetReadDeadline(time.Time{})
	if !ws {
		// net/http keeps its own buffers; br (holding what was peeked)
		// goes with the connection.
		select {
		case s.httpLn.ch <- &peekedConn{Conn: c, r: br}:
		case <-s.httpLn.done:
			_ = c.Close()
		}
		return
	}
	s.g.ws.ServeRaw(c, br, &s.pool, s.gate(c.RemoteAddr().String()))
}

// gate applies the client endpoint's checks to a raw upgrade.
func (s *sniffer) gate(remote string) func(uri, host, origin string) (string, int) {
	return func(uri, host, origin string) (string, int) {
		if s.g.originRefused(origin, host, remote) {
			return "", http.StatusForbidden
		}
		if s.g.overLimit(remote) {
			return "", http.StatusServiceUnavailable
		}
		u, err := url.ParseRequestURI(uri)
		if err != nil {
			return "", http.StatusBadRequest
		}
		return KeyFromQuery(u.RawQuery), 0
	}
}

// isUpgradeHead peeks at the request head: a GET of path asking to upgrade
// to WebSocket. It consumes nothing.
func isUpgradeHead(br *bufio.Reader, path string) bool {
	var head []byte
	for {
		b, _ := br.Peek(br.Buffered())
		if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
			head = b[:i]
			break
		}
		if br.Buffered() == br.Size() {
			return false // too big for us; net/http will answer
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return false
		}
	}
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	target, ok := bytes.CutPrefix(line, []byte("GET "))
	if !ok {
		return false
	}
	target, _, _ = bytes.Cut(target, []byte(" "))
	target, _, _ = bytes.Cut(target, []byte("?"))
	if string(target) != path {
		return false
	}
	for h := range bytes.SplitSeq(rest, []byte("\r\n")) {
		k, v, _ := bytes.Cut(h, []byte(":"))
		if bytes.EqualFold(bytes.TrimSpace(k), []byte("Upgrade")) &&
			bytes.Contains(bytes.ToLower(v), []byte("websocket")) {
			return true
		}
	}
	return false
}

// peekedConn replays the bytes the sniffer peeked before the rest.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekedConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// chanListener feeds net/http the connections the sniffer passes on.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
