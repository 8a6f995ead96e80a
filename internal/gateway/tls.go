package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/metrics"
)

// TLS (--tls-cert, --tls-key) serves every route and transport on the same
// listener, as https:// and wss://. Its connections skip the WebSocket
// sniffer: every one goes to net/http (HTTP/2 where the client offers h2;
// WebSocket upgrades arrive on HTTP/1.1 and are hijacked there), because
// the plaintext fast path — epoll on the raw descriptor, writev — cannot
// see through crypto/tls. A TLS WebSocket thus holds a reader goroutine
// and its TLS buffers for its whole life. The plaintext path is untouched.

// certCheckEvery bounds how often the certificate files are looked at: at
// most once per interval, on a handshake.
const certCheckEvery = time.Second

// notTLSBody answers plain HTTP on the TLS port.
const notTLSBody = "this port serves TLS: use https:// or wss://\n"

// tlsConfig returns the listener's TLS configuration, its certificate
// loaded now (a missing or broken pair fails the start) and re-read when
// the files change.
func tlsConfig(cfg config.Serve, log *slog.Logger) (*tls.Config, error) {
	r := &certReloader{certFile: cfg.TLSCert, keyFile: cfg.TLSKey, log: log}
	if err := r.load(); err != nil {
		return nil, err
	}
	if strings.Contains(os.Getenv("GODEBUG"), "http2xconnect=1") {
		log.Warn("GODEBUG=http2xconnect=1 announces WebSocket over HTTP/2, which wspubsub does not serve: browsers' wss:// connections will fail over to EventSource; unset it")
	}
	leaf := r.cert.Leaf
	log.Info("TLS: serving https:// and wss://", "cert", cfg.TLSCert, "subject", leaf.Subject.String(),
		"not_after", leaf.NotAfter.UTC().Format(time.RFC3339), "serial", leaf.SerialNumber.Text(16))
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.getCertificate,
		// h2 for EventSource and polling; WebSocket needs http/1.1 (Go's
		// HTTP/2 server does not offer RFC 8441's extended CONNECT unless
		// GODEBUG=http2xconnect=1, so browsers open WebSockets on HTTP/1.1).
		NextProtos: []string{"h2", "http/1.1"},
	}, nil
}

// fileStamp is what says a file changed: its size and modification time.
type fileStamp struct {
	size, modNano int64
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{fi.Size(), fi.ModTime().UnixNano()}, nil
}

// certReloader holds the certificate presented in handshakes, reloaded
// when the files' size or modification time changes (a renewal, a
// Kubernetes secret update). A pair that does not load keeps the previous
// one in use; the failure is logged once per change of the files.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	loaded  [2]fileStamp // the files cert came from
	failed  [2]fileStamp // the files whose load failed last (logged)
	checked time.Time
}

// load reads the pair now.
func (r *certReloader) load() error {
	var st [2]fileStamp
	var err error
	for i, p := range []string{r.certFile, r.keyFile} {
		if st[i], err = stampOf(p); err != nil {
			return fmt.Errorf("reading --tls-cert / --tls-key: %w", err)
		}
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("loading TLS certificate %s and key %s: %w", r.certFile, r.keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("parsing TLS certificate %s: %w", r.certFile, err)
		}
	}
	r.cert, r.loaded = &cert, st
	return nil
}

// getCertificate is tls.Config.GetCertificate.
func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) >= certCheckEvery {
		r.checked = time.Now()
		r.reloadIfChanged()
	}
	return r.cert, nil
}

// reloadIfChanged reloads the pair when the files changed (under mu).
func (r *certReloader) reloadIfChanged() {
	var st [2]fileStamp
	var statErr error
	for i, p := range []string{r.certFile, r.keyFile} {
		if s, err := stampOf(p); err != nil {
			statErr = err
		} else {
			st[i] = s
		}
	}
	if st == r.loaded || st == r.failed {
		return
	}
	err := statErr
	if err == nil {
		err = r.load()
	}
	if err != nil {
		r.failed = st
		r.log.Error("TLS certificate not reloaded: keeping the previous one", "cert", r.certFile, "key", r.keyFile, "err", err)
		return
	}
	r.failed = [2]fileStamp{}
	r.log.Info("TLS certificate reloaded", "cert", r.certFile, "subject", r.cert.Leaf.Subject.String(),
		"not_after", r.cert.Leaf.NotAfter.UTC().Format(time.RFC3339), "serial", r.cert.Leaf.SerialNumber.Text(16))
}

// tlsListener accepts from ln, answers plain connections with 400, and
// returns TLS connections to net/http once their handshake is done, on
// a goroutine of each connection's own (a slow handshake never holds up
// Accept).
type tlsListener struct {
	ln   net.Listener
	cfg  *tls.Config
	g    *Gateway
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

// listenTLS starts accepting on the gateway's listener for net/http.
func (g *Gateway) listenTLS() net.Listener {
	// A copy: net/http's HTTP/2 set-up writes to srv.TLSConfig when Serve
	// starts, while handshakes may already be reading this one.
	l := &tlsListener{ln: g.ln, cfg: g.srv.TLSConfig.Clone(), g: g, ch: make(chan net.Conn), done: make(chan struct{})}
	go l.run()
	return l
}

func (l *tlsListener) run() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				_ = l.Close()
				return
			}
			time.Sleep(5 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		go l.handshake(c)
	}
}

// handshake looks at the first bytes: a TLS record goes on to the
// handshake, anything else is refused (plain HTTP with a 400 that says
// why).
func (l *tlsListener) handshake(c net.Conn) {
	defer func() {
		// A bug some handshake reached (crypto/tls, a certificate
		// callback): no session exists yet, so log, count, drop this
		// socket and keep serving, as every per-connection goroutine does.
		if r := recover(); r != nil {
			l.g.log.Error("TLS handshake failed: internal error", "remote", c.RemoteAddr().String(),
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			l.g.metrics.Rejections.WithLabelValues(metrics.RejectInternal).Inc()
			_ = c.Close()
		}
	}()
	_ = c.SetDeadline(time.Now().Add(headerTimeout))
	var first [8]byte
	n, err := c.Read(first[:])
	if err != nil {
		_ = c.Close()
		return
	}
	const recordTypeHandshake = 0x16 // every TLS connection starts with one
	if first[0] != recordTypeHandshake {
		l.g.notTLS(c, first[:n])
		return
	}
	tc := tls.Server(&prefixConn{Conn: c, head: first[:n]}, l.cfg)
	ctx, cancel := context.WithTimeout(context.Background(), headerTimeout)
	err = tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		l.g.metrics.Rejections.WithLabelValues(metrics.RejectTLSHandshake).Inc()
		l.g.sampled.Log(slog.LevelDebug, "TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		_ = c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	select {
	case l.ch <- tc:
	case <-l.done:
		_ = tc.Close()
	}
}

// notTLS answers a connection that did not start with a TLS record: a
// request gets 400 and a body naming the right scheme, then the socket is
// closed once the client has had the answer (half-close, then what it
// still sends is read and dropped, so no reset overtakes the answer).
func (g *Gateway) notTLS(c net.Conn, head []byte) {
	defer func() { _ = c.Close() }()
	g.metrics.Rejections.WithLabelValues(metrics.RejectNotTLS).Inc()
	g.sampled.Log(slog.LevelDebug, "plain connection on the TLS port refused", "remote", c.RemoteAddr().String())
	if !looksLikeHTTP(head) {
		return
	}
	_, err := io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"+
		"Connection: close\r\n"+fmt.Sprintf("Content-Length: %d\r\n\r\n", len(notTLSBody))+notTLSBody)
	if err != nil {
		return
	}
	if u, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = u.NetConn()
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10)) // until the client closes, or the deadline
	}
}

// looksLikeHTTP reports whether b starts like a request line: a method in
// capital letters.
func looksLikeHTTP(b []byte) bool {
	for i, ch := range b {
		if ch == ' ' && i > 0 {
			return true
		}
		if ch < 'A' || ch > 'Z' {
			return false
		}
	}
	return len(b) > 0
}

// prefixConn replays the bytes read to tell TLS from plain text.
type prefixConn struct {
	net.Conn
	head []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.head) > 0 {
		n := copy(b, p.head)
		p.head = p.head[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

func (l *tlsListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops handing connections to net/http (the gateway closes the
// listener underneath, which ends run).
func (l *tlsListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *tlsListener) Addr() net.Addr { return l.ln.Addr() }
