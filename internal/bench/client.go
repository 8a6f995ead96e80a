package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
)

// WorkerConfig is one client process's share of the connections.
type WorkerConfig struct {
	URL string `json:"url"` // ws://host:port/path
	// URLs are several gateways: connection (key index) i goes to
	// URLs[i mod len(URLs)]. They take precedence over URL.
	URLs       []string      `json:"urls,omitempty"`
	KeyPrefix  string        `json:"keyPrefix"` // key i is KeyPrefix + i
	First      int           `json:"first"`     // index of the first key
	Count      int           `json:"count"`     // connections to open
	Source     string        `json:"source"`    // local IP to connect from ("" = any)
	Transport  string        `json:"transport"` // websocket, eventsource, polling
	Batch      int           `json:"batch"`     // connections opened concurrently
	Messages   int           `json:"messages"`  // sequence space, for duplicate detection
	Broadcast  bool          `json:"broadcast"` // every connection receives every message
	SlowFrom   int           `json:"slowFrom"`  // keys from this index on never read (0: none)
	ChurnShare float64       `json:"churn"`     // share of connections that reconnect in a loop
	ChurnFor   time.Duration `json:"churnFor"`
	Resume     bool          `json:"resume"` // connect with since= (the last id received), parse ids
	// Raw is the calibration's listener (host:port): plain TCP
	// connections, no handshake, read as WebSocket (ceiling.go).
	Raw string `json:"raw,omitempty"`
}

// WorkerStats is what a worker reports at the end.
type WorkerStats struct {
	Connected         int           `json:"connected"`
	ConnectFailures   int           `json:"connectFailures"`
	ConnectSeconds    float64       `json:"connectSeconds"`
	Received          int64         `json:"received"`
	Duplicates        int64         `json:"duplicates"`
	OutOfOrder        int64         `json:"outOfOrder"`
	Unexpected        int64         `json:"unexpected"`
	ServerClosed      int64         `json:"serverClosed"`
	Retried           int64         `json:"retried"`   // reconnects after a 1013 close
	Positions         int64         `json:"positions"` // {"id":…} frames (resume from now)
	Gaps              int64         `json:"gaps"`      // {"gap":true} frames
	ReconnectFailures int           `json:"reconnectFailures"`
	ChurnConnects     int64         `json:"churnConnects"`
	ChurnFailures     int64         `json:"churnFailures"`
	Latency           map[int]int64 `json:"latency"`
	Arrival           map[int]int64 `json:"arrival,omitempty"`
	// Timeline: latency buckets per send-time slot (slot number → buckets).
	Timeline        map[int64]map[int]int64 `json:"timeline,omitempty"`
	ArrivalTimeline map[int64]map[int]int64 `json:"arrivalTimeline,omitempty"`
}

// Worker holds connections and counts what they receive. Its reader does
// as little as possible per frame — large reads, the frame header, the
// sequence number and the send time — so it can measure a gateway that
// delivers a million frames a second.
type Worker struct {
	cfg  WorkerConfig
	hist histogram
	tl   timeline
	// arrival, atl: latency to the kernel's receive stamp on the client
	// socket (WebSocket only), without the tool's own scheduling delay.
	arrival histogram
	atl     timeline
	seen    *seen
	conns   []*wconn

	received, dups, ooo, unexpected, serverClosed atomic.Int64
	retried                                       atomic.Int64
	positions, gaps                               atomic.Int64
	churnConnects, churnFailures                  atomic.Int64
	connectFailures, reconnectFailures            int
	connectTime                                   time.Duration

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	http   *http.Client
	// polls: WebSocket readers without a goroutine each, started with the
	// first connection (nil: a goroutine each).
	polls    *pollReaders
	pollOnce sync.Once
}

type wconn struct {
	idx    int
	mu     sync.Mutex
	nc     net.Conn
	body   io.Closer
	cancel context.CancelFunc // stops its reader (polling)
	done   chan struct{}      // closed when its reader returns
	polled *polled            // its reader, when an epoll set reads it
	last   atomic.Int64       // highest sequence number seen
	// lastID is the id of the last frame that carried one (resume). Only
	// its reader writes it; open reads it once that reader has returned.
	lastID []byte
	gen    int // reconnects so far (polling: a fresh sid each time)
	// retries counts reconnects after 1013 (retry: one at a time per
	// connection, after its reader returned).
	retries int
}

// NewWorker prepares a worker; Connect opens its connections.
func NewWorker(cfg WorkerConfig) *Worker {
	if cfg.Batch <= 0 {
		cfg.Batch = 200
	}
	if cfg.Transport == "" {
		cfg.Transport = "websocket"
	}
	w := &Worker{cfg: cfg, seen: newSeen(cfg.Messages)}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	w.http = &http.Client{Transport: &http.Transport{
		DialContext: w.dialer().DialContext, MaxIdleConnsPerHost: cfg.Count + 16, MaxConnsPerHost: 0,
		DisableCompression: true,
	}}
	return w
}

func (w *Worker) dialer() *net.Dialer {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if w.cfg.Source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(w.cfg.Source)}
	}
	return d
}

// urlOf is connection idx's gateway: with several, URLs[idx mod n], so
// that each holds ~1/n of the connections whatever the client process.
func (w *Worker) urlOf(idx int) string {
	if n := len(w.cfg.URLs); n > 0 {
		return w.cfg.URLs[idx%n]
	}
	return w.cfg.URL
}

func (w *Worker) key(i int) string { return fmt.Sprintf("%s%d", w.cfg.KeyPrefix, i) }

// Connect opens every connection, cfg.Batch at a time, and returns how many
// failed.
func (w *Worker) Connect() int {
	start := time.Now()
	w.conns = make([]*wconn, w.cfg.Count)
	for i := range w.conns {
		c := &wconn{idx: w.cfg.First + i}
		c.last.Store(-1)
		w.conns[i] = c
	}
	w.connectFailures, w.connectTime = w.openAll()
	if w.cfg.Resume {
		// Resuming from now, a client is subscribed once told its position:
		// the gateway reads it from the history after the handshake, and a
		// message recorded before that read is before the client's "now".
		want := int64(w.cfg.Count - w.connectFailures)
		if w.cfg.SlowFrom > 0 { // those never read
			want -= int64(max(0, w.cfg.First+w.cfg.Count-max(w.cfg.SlowFrom, w.cfg.First)))
		}
		for deadline := time.Now().Add(10 * time.Second); w.positions.Load() < want && time.Now().Before(deadline); {
			time.Sleep(2 * time.Millisecond)
		}
		w.connectTime = time.Since(start)
	}
	if w.cfg.ChurnShare > 0 {
		w.startChurn()
	}
	return w.connectFailures
}

// openAll opens every connection, cfg.Batch at a time.
func (w *Worker) openAll() (failures int, took time.Duration) {
	start := time.Now()
	sem := make(chan struct{}, w.cfg.Batch)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range w.conns {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := w.open(c); err != nil {
				mu.Lock()
				failures++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failures, time.Since(start)
}

// Disconnect closes every connection (the client goes away) and waits
// until their readers have returned.
func (w *Worker) Disconnect() {
	var dones []chan struct{}
	for _, c := range w.conns {
		if d := w.closeConn(c); d != nil {
			dones = append(dones, d)
		}
	}
	timeout := time.After(30 * time.Second)
	for _, d := range dones {
		select {
		case <-d:
		case <-timeout:
			return
		}
	}
}

// Reconnect opens every connection again (with since=<the last id each
// received>, when resuming) and returns how many failed.
func (w *Worker) Reconnect() int {
	for _, c := range w.conns {
		c.gen++
	}
	f, _ := w.openAll()
	w.reconnectFailures += f
	return f
}

func (w *Worker) open(c *wconn) error { return w.openOver(c, nil) }

// openOver is open, unless old is not nil and, once the new connection is
// dialled, c's is no longer old: someone else (churn, a reconnect) opened
// it meanwhile, and the new one is closed instead of orphaning theirs.
func (w *Worker) openOver(c *wconn, old net.Conn) error {
	if w.cfg.Raw != "" {
		return w.openRaw(c, old)
	}
	url := w.urlOf(c.idx) + "?" + w.key(c.idx)
	if w.cfg.Resume {
		url += "&since=" + string(c.lastID) // ids are [0-9a-z.-]: nothing to escape
	}
	done := make(chan struct{})
	switch w.cfg.Transport {
	case "websocket":
		nd := w.dialer()
		if w.cfg.SlowFrom > 0 && c.idx >= w.cfg.SlowFrom {
			// A client that never reads, with a small receive buffer set
			// before connecting (a stuck mobile client), so its backlog
			// reaches the gateway's queue within seconds instead of first
			// filling megabytes of kernel buffers.
			nd.Control = func(_, _ string, rc syscall.RawConn) error {
				return rc.Control(func(fd uintptr) {
					_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
				})
			}
		}
		d := ws.Dialer{Timeout: 10 * time.Second, NetDial: nd.DialContext}
		nc, br, _, err := d.Dial(w.ctx, url)
		if err != nil {
			return err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if old != nil && c.nc != old {
			_ = nc.Close()
			return nil
		}
		c.nc = nc
		if w.cfg.SlowFrom > 0 && c.idx >= w.cfg.SlowFrom {
			return nil // never read
		}
		c.done = done
		w.read(c, nc, br, done)
		return nil
	case "eventsource":
		req, _ := http.NewRequestWithContext(w.ctx, "GET", toHTTP(url), nil)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := w.http.Do(req)
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 {
			resp.Body.Close()
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		c.mu.Lock()
		c.body, c.done = resp.Body, done
		c.mu.Unlock()
		w.wg.Add(1)
		go w.readSSE(c, resp.Body, done)
		return nil
	case "polling":
		// The sid names the connection: a reconnect is a new one.
		base := toHTTP(w.urlOf(c.idx)) + "?" + w.key(c.idx) + "&sid=b" + fmt.Sprint(c.idx)
		if c.gen > 0 {
			base += "r" + fmt.Sprint(c.gen)
		}
		purl := base
		if w.cfg.Resume {
			purl += "&since=" + string(c.lastID)
		}
		ctx, cancel := context.WithCancel(w.ctx)
		c.mu.Lock()
		c.cancel, c.done = cancel, done
		c.mu.Unlock()
		w.wg.Add(1)
		go w.poll(ctx, c, base, done)
		// The first poll is held by the gateway; the connection is open
		// once a POSTed ping on it is answered.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			resp, err := w.http.Post(purl, "text/plain", strings.NewReader("ping"))
			if err != nil {
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		return fmt.Errorf("polling connection not admitted within 10s")
	}
	return fmt.Errorf("unknown transport %q", w.cfg.Transport)
}

func toHTTP(u string) string {
	return strings.Replace(strings.Replace(u, "wss://", "https://", 1), "ws://", "http://", 1)
}

var prefix = []byte(`{"data":{"s":`)

var (
	idPrefix = []byte(`{"id":"`)
	gapFrame = []byte(`{"gap":true}`)
)

// startChurn makes the last ChurnShare of the connections close and
// reconnect in a loop for ChurnFor.
func (w *Worker) startChurn() {
	n := int(float64(len(w.conns)) * w.cfg.ChurnShare)
	deadline := time.Now().Add(w.cfg.ChurnFor)
	for _, c := range w.conns[len(w.conns)-n:] {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for time.Now().Before(deadline) && w.ctx.Err() == nil {
				w.closeConn(c)
				time.Sleep(50 * time.Millisecond)
				w.churnConnects.Add(1)
				if err := w.open(c); err != nil {
					w.churnFailures.Add(1)
				}
				time.Sleep(200 * time.Millisecond)
			}
		}()
	}
}

// closeConn closes c (from the client's side) and returns the channel its
// reader closes on return (nil when it has none).
func (w *Worker) closeConn(c *wconn) chan struct{} {
	c.mu.Lock()
	done, pc := c.done, c.polled
	c.done, c.polled = nil, nil
	if c.cancel != nil {
		c.cancel()
		c.cancel = nil
	}
	if c.nc != nil {
		_ = ws.WriteFrame(c.nc, ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))))
		_ = c.nc.Close() // (an epoll set forgets a closed descriptor by itself)
		c.nc = nil
	}
	if c.body != nil {
		_ = c.body.Close()
		c.body = nil
	}
	c.mu.Unlock()
	if pc != nil {
		pc.closing() // not under c.mu: the set's reader takes it
	}
	return done
}

// Received returns deliveries so far.
func (w *Worker) Received() int64 { return w.received.Load() }

// Stop closes every connection and returns the counts.
func (w *Worker) Stop() WorkerStats {
	w.cancel()
	for _, c := range w.conns {
		w.closeConn(c)
	}
	w.wg.Wait()
	w.pollOnce.Do(func() {}) // none is started from now on
	if w.polls != nil {
		w.polls.stop()
	}
	return WorkerStats{
		Connected: w.cfg.Count - w.connectFailures, ConnectFailures: w.connectFailures,
		ConnectSeconds: w.connectTime.Seconds(),
		Received:       w.received.Load(), Duplicates: w.dups.Load(), OutOfOrder: w.ooo.Load(),
		Unexpected: w.unexpected.Load(), ServerClosed: w.serverClosed.Load(), Retried: w.retried.Load(),
		Positions: w.positions.Load(), Gaps: w.gaps.Load(), ReconnectFailures: w.reconnectFailures,
		ChurnConnects: w.churnConnects.Load(), ChurnFailures: w.churnFailures.Load(),
		Latency: w.hist.snapshot(), Arrival: w.arrival.snapshot(), Timeline: w.tl.snapshot(),
		ArrivalTimeline: w.atl.snapshot(),
	}
}
