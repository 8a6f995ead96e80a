package bench

// The calibration's connections: a loopback listener in this process (the
// sender's ends) and the load tool's readers, in this process or in client
// processes (`wspubsub bench --worker`, WorkerConfig.Raw), each from its own
// source address, as the scenarios spread theirs.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// fdMargin is what this process keeps of its open-file limit for
// everything but the calibration's sockets.
const fdMargin = 256

// openCeiling opens cfg.CeilingConns connections and starts their readers.
func openCeiling(ctx context.Context, cfg Config) (*ceilingRun, error) {
	n := cfg.CeilingConns
	limit := openFileLimit()
	if n+fdMargin > limit {
		return nil, fmt.Errorf("ceiling: %d connections need %d open files in this process (limit %d): lower --calibrate-conns (or --conns)", n, n+fdMargin, limit)
	}
	inProc := min(cfg.CeilingInProc, (limit-fdMargin)/2) // both ends here: two descriptors each
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("ceiling: %w", err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, n)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case accepted <- c:
			default: // more than asked for: not ours
				_ = c.Close()
			}
		}
	}()
	r := &ceilingRun{}
	if r.readers, err = startCeilingReaders(cfg, ln.Addr().String(), n, inProc); err != nil {
		return nil, err
	}
	r.received = func() int64 {
		var s int64
		for _, w := range r.readers {
			s += w.received()
		}
		return s
	}
	failures := 0
	for _, w := range r.readers {
		f, err := w.ready()
		if err != nil {
			r.close()
			return nil, err
		}
		failures += f
	}
	timeout := time.After(10 * time.Second)
	for len(r.conns) < n-failures {
		select {
		case c := <-accepted:
			r.conns = append(r.conns, c)
		case <-timeout:
			failures = n - len(r.conns) // stop waiting
		case <-ctx.Done():
			r.close()
			return nil, ctx.Err()
		}
	}
	if len(r.conns) == 0 {
		r.close()
		return nil, errors.New("ceiling: no connection opened")
	}
	return r, nil
}

// startCeilingReaders starts readers for n connections to addr: in this
// process up to inProc, else in client processes of cfg.PerProc each.
func startCeilingReaders(cfg Config, addr string, n, inProc int) ([]worker, error) {
	wc := WorkerConfig{Raw: addr, KeyPrefix: "ceiling-", Batch: cfg.Batch, Broadcast: true, Transport: "websocket"}
	if n <= inProc {
		wc.Count, wc.Source = n, "127.0.0.1"
		w := NewWorker(wc)
		l := &localWorker{w: w, done: make(chan int, 1)}
		go func() { l.done <- w.Connect() }()
		return []worker{l}, nil
	}
	var out []worker
	for i := 0; i*cfg.PerProc < n; i++ {
		wc.First = i * cfg.PerProc
		wc.Count = min(cfg.PerProc, n-wc.First)
		wc.Source = fmt.Sprintf("127.0.0.%d", i+1)
		c, err := startChild(cfg, wc)
		if err != nil {
			stopAll(out)
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// openRaw connects c to the calibration's listener (no handshake) and reads
// it as a WebSocket connection.
func (w *Worker) openRaw(c *wconn, old net.Conn) error {
	nc, err := w.dialer().DialContext(w.ctx, "tcp", w.cfg.Raw)
	if err != nil {
		return err
	}
	done := make(chan struct{})
	c.mu.Lock()
	defer c.mu.Unlock()
	if old != nil && c.nc != old { // reopened meanwhile (see openOver)
		_ = nc.Close()
		return nil
	}
	c.nc, c.done = nc, done
	w.read(c, nc, nil, done)
	return nil
}

func (r *ceilingRun) inProcess() bool {
	_, ok := r.readers[0].(*localWorker)
	return len(r.readers) == 1 && ok
}

// close resets the sender's ends (SO_LINGER 0: no TIME_WAIT is left on
// either side to hold the source addresses' ports), then stops the
// readers. It may be called more than once.
func (r *ceilingRun) close() {
	for _, c := range r.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
	r.conns = nil
	stopAll(r.readers)
	r.readers = nil
}

// openFileLimit is this process's open-file limit (Go raises the soft
// limit to the hard one at start).
func openFileLimit() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil || l.Cur > 1<<30 {
		return 1 << 20
	}
	return int(l.Cur)
}
