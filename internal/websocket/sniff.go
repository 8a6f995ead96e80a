package websocket

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"sync"
	"time"
)

// sniffer sits in front of net/http: it peeks at each new connection's
// first request and upgrades WebSocket requests of the client path itself
// (gobwas reads them with pooled buffers, leaving no garbage per
// connection), and hands everything else — health checks, EventSource,
// polls, the page — to net/http through httpLn.
type sniffer struct {
	srv    *Server
	ln     net.Listener
	path   string
	gate   Gate
	httpLn *chanListener
	pool   sync.Pool // *bufio.Reader, 4 KB

	mu      sync.Mutex
	sniffed map[net.Conn]struct{} // sockets whose head is still awaited
}

// Listen accepts connections on ln until it is closed: WebSocket upgrades
// of path are checked by gate and served here; every other connection is
// returned through the listener Listen returns, for net/http to serve.
func (s *Server) Listen(ln net.Listener, path string, gate Gate) net.Listener {
	sn := &sniffer{srv: s, ln: ln, path: path, gate: gate, sniffed: map[net.Conn]struct{}{},
		httpLn: &chanListener{addr: ln.Addr(), ch: make(chan net.Conn), done: make(chan struct{})}}
	sn.pool.New = func() any { return bufio.NewReaderSize(nil, 4096) }
	go sn.run()
	return sn.httpLn
}

// run accepts until the listener is closed.
func (s *sniffer) run() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				s.httpLn.Close()
				s.closeSniffed()
				return
			}
			time.Sleep(5 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		s.mu.Lock()
		s.sniffed[c] = struct{}{}
		s.mu.Unlock()
		go s.sniff(c)
	}
}

// closeSniffed closes the sockets that never sent a request head once the
// listener is closed: net/http's shutdown does not know them, and a client
// that sends its request on one later would wait for an answer that never
// comes.
func (s *sniffer) closeSniffed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.sniffed {
		_ = c.Close()
	}
}

// sniffedOne takes c off the awaited list, or reports false when the
// listener has closed meanwhile (and c with it).
func (s *sniffer) sniffedOne(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sniffed, c)
	select {
	case <-s.httpLn.done:
		return false
	default:
		return true
	}
}

func (s *sniffer) sniff(c net.Conn) {
	defer func() {
		// No session exists yet: log, drop this socket, keep serving.
		if r := recover(); r != nil {
			s.srv.cfg.Logger.Error("websocket handshake failed: internal error", "remote", c.RemoteAddr().String(),
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			s.sniffedOne(c)
			_ = c.Close()
		}
	}()
	br := s.pool.Get().(*bufio.Reader)
	br.Reset(c)
	_ = c.SetReadDeadline(time.Now().Add(handshakeTimeout))
	ws, err := isUpgradeHead(br, s.path)
	_ = c.SetReadDeadline(time.Time{})
	if !s.sniffedOne(c) || err != nil {
		// No complete head within the handshake timeout (or none before
		// the client left): nobody to answer.
		_ = c.Close()
		return
	}
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
	s.srv.serveRaw(c, br, &s.pool, s.gate)
}

// isUpgradeHead peeks at the request head: a GET of path asking to upgrade
// to WebSocket. It consumes nothing; err is the read error that stopped it
// before a whole head (or a full buffer) arrived.
func isUpgradeHead(br *bufio.Reader, path string) (bool, error) {
	var head []byte
	for {
		b, _ := br.Peek(br.Buffered())
		if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
			head = b[:i]
			break
		}
		if bytes.Contains(b, []byte("\n\n")) || br.Buffered() == br.Size() {
			return false, nil // bare LF line ends, or too big for us: net/http will answer
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return false, err
		}
	}
	line, rest, _ := bytes.Cut(head, []byte("\r\n"))
	target, ok := bytes.CutPrefix(line, []byte("GET "))
	if !ok {
		return false, nil
	}
	target, _, _ = bytes.Cut(target, []byte(" "))
	target, _, _ = bytes.Cut(target, []byte("?"))
	if string(target) != path {
		return false, nil
	}
	for h := range bytes.SplitSeq(rest, []byte("\r\n")) {
		k, v, _ := bytes.Cut(h, []byte(":"))
		if bytes.EqualFold(bytes.TrimSpace(k), []byte("Upgrade")) &&
			bytes.Contains(bytes.ToLower(v), []byte("websocket")) {
			return true, nil
		}
	}
	return false, nil
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
