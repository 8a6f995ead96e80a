package bench

// Reading what the gateway sends: WebSocket frames, EventSource events
// and poll answers, and finding the numbered message in each.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/gobwas/ws"
)

// byServer reports whether a connection that ended was closed by the
// server: not by Stop, nor by closeConn (which clears c.nc and c.body).
func (w *Worker) byServer(c *wconn, nc net.Conn, body io.Closer) bool {
	if w.ctx.Err() != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return (nc != nil && c.nc == nc) || (body != nil && c.body == body)
}

// read starts reading WebSocket connection c (under c.mu): from an epoll
// set when it can (a TCP connection with nothing buffered by the
// handshake, br), else with a goroutine of its own.
func (w *Worker) read(c *wconn, nc net.Conn, br *bufio.Reader, done chan struct{}) {
	c.polled = nil
	w.pollOnce.Do(func() { w.polls = newPollReaders(w) })
	s := newStampedReader(nc)
	if s != nil && w.polls != nil && (br == nil || br.Buffered() == 0) {
		if c.polled = w.polls.add(c, nc, s, done); c.polled != nil {
			return
		}
	}
	var r io.Reader = nc
	if s != nil {
		r = s
	}
	if br != nil {
		r = io.MultiReader(br, r)
	}
	w.wg.Add(1)
	go w.readWS(c, nc, r, s, done)
}

// readWS parses server frames straight out of large reads; with s (r
// reads through it) each frame also gets the kernel's arrival stamp.
func (w *Worker) readWS(c *wconn, nc net.Conn, r io.Reader, s *stampedReader, done chan struct{}) {
	defer w.wg.Done()
	defer close(done)
	buf := make([]byte, 16<<10)
	n := 0
	for {
		m, err := r.Read(buf[n:])
		if err != nil {
			w.readFailed(c, nc)
			return
		}
		n += m
		var arrived time.Time
		if s != nil {
			arrived, s.at = s.at, time.Time{}
		}
		used, need, end := w.frames(c, nc, buf[:n], time.Now(), arrived, done)
		if end {
			return
		}
		n = copy(buf, buf[used:n])
		if need > len(buf) {
			buf = append(buf[:n], make([]byte, need+len(buf)-n)...)
		}
	}
}

// readFailed counts a read that failed because the server ended the
// connection.
func (w *Worker) readFailed(c *wconn, nc net.Conn) {
	if w.byServer(c, nc, nil) {
		w.serverClosed.Add(1)
	}
}

// frames handles the whole frames at the start of buf, read at now
// (arrived: the kernel's stamp, if any): it returns how many bytes they
// took, the size a frame cut short needs (0 if none is), and whether the
// connection ended (a close frame: a retry is started when the server
// asked for one, after done is closed).
func (w *Worker) frames(c *wconn, nc net.Conn, buf []byte, now, arrived time.Time, done chan struct{}) (used, need int, end bool) {
	off, n := 0, len(buf)
	for n-off >= 2 {
		op := buf[off] & 0x0f
		plen := int(buf[off+1] & 0x7f)
		hdr := 2
		switch plen {
		case 126:
			if n-off < 4 {
				return off, 0, false
			}
			plen, hdr = int(binary.BigEndian.Uint16(buf[off+2:])), 4
		case 127:
			if n-off < 10 {
				return off, 0, false
			}
			plen, hdr = int(binary.BigEndian.Uint64(buf[off+2:])), 10
		}
		if n-off < hdr+plen {
			return off, hdr + plen, false
		}
		payload := buf[off+hdr : off+hdr+plen]
		switch op {
		case 1, 2:
			w.onMessage(c, payload, now, arrived)
		case 8:
			if w.byServer(c, nc, nil) {
				w.serverClosed.Add(1)
				if len(payload) >= 2 && binary.BigEndian.Uint16(payload) == closeTryAgain {
					w.wg.Add(1)
					go w.retry(c, nc, done)
				}
			}
			return off + hdr + plen, 0, true
		case 9:
			_ = ws.WriteFrame(nc, ws.MaskFrame(ws.NewPongFrame(append([]byte(nil), payload...))))
		}
		off += hdr + plen
	}
	return off, 0, false
}

func (w *Worker) readSSE(c *wconn, body io.ReadCloser, done chan struct{}) {
	defer w.wg.Done()
	defer close(done)
	br := bufio.NewReaderSize(body, 16<<10)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if w.byServer(c, nil, body) {
				w.serverClosed.Add(1)
			}
			return
		}
		if p, ok := bytes.CutPrefix(line, []byte("data: ")); ok {
			w.onMessage(c, p, time.Now(), time.Time{})
		} else if bytes.HasPrefix(line, []byte("event: close")) {
			if w.byServer(c, nil, body) {
				w.serverClosed.Add(1)
			}
			return
		}
	}
}

// poll polls base (the key and sid) until ctx ends; when resuming, every
// poll names the last id received (the gateway answers one message per
// poll, and sends it again to a poll naming the same since).
func (w *Worker) poll(ctx context.Context, c *wconn, base string, done chan struct{}) {
	defer w.wg.Done()
	defer close(done)
	for ctx.Err() == nil {
		url := base
		if w.cfg.Resume {
			url += "&since=" + string(c.lastID)
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		req.Header.Set("X-Socket-Transport", "xhrPolling")
		resp, err := w.http.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				w.serverClosed.Add(1)
			}
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			if ctx.Err() == nil {
				w.serverClosed.Add(1)
			}
			return
		}
		if len(body) > 0 {
			w.onMessage(c, body, time.Now(), time.Time{})
		}
	}
}

// onMessage records one delivery: {"data":{"s":<seq>,"t":<unix ns>}}, or
// for a resuming client {"id":"<id>","data":{…}}; {"id":"<id>"} (the
// position of a client resuming from now) and {"gap":true} are not
// messages. now is when the tool read it; arrived, when known, when the
// kernel received it on the client's socket.
func (w *Worker) onMessage(c *wconn, p []byte, now, arrived time.Time) {
	if w.cfg.Resume {
		if id, position, ok := parseID(p); ok {
			c.lastID = append(c.lastID[:0], id...)
			if position {
				w.positions.Add(1)
				return
			}
		} else if bytes.HasPrefix(p, gapFrame) {
			w.gaps.Add(1)
			return
		}
	}
	seq, sent, ok := parseSeq(p)
	if !ok {
		w.unexpected.Add(1) // e.g. a heartbeat
		return
	}
	w.received.Add(1)
	lat := now.Sub(time.Unix(0, sent))
	w.hist.record(lat)
	w.tl.record(sent, lat)
	if !arrived.IsZero() {
		a := arrived.Sub(time.Unix(0, sent))
		w.arrival.record(a)
		w.atl.record(sent, a)
	}
	last := c.last.Load()
	var dup bool
	if w.cfg.Broadcast {
		dup = seq == last // every connection gets every number, in order
	} else {
		dup, _ = w.seen.mark(seq) // each number goes to one connection, once
	}
	switch {
	case dup:
		w.dups.Add(1)
	case seq < last:
		w.ooo.Add(1)
	default:
		c.last.Store(seq)
	}
}

// parseID reads the id of a frame for a resuming client, and whether the
// frame is only a position ({"id":"<id>"}, no data).
func parseID(p []byte) (id []byte, position, ok bool) {
	if !bytes.HasPrefix(p, idPrefix) {
		return nil, false, false
	}
	rest := p[len(idPrefix):]
	j := bytes.IndexByte(rest, '"')
	if j <= 0 || j > 64 {
		return nil, false, false
	}
	return rest[:j], j+1 < len(rest) && rest[j+1] == '}', true
}

// parseSeq reads the sequence number and send time without a JSON decoder.
func parseSeq(p []byte) (seq, sent int64, ok bool) {
	i := len(prefix)
	if !bytes.HasPrefix(p, prefix) {
		j := bytes.Index(p, []byte(`"s":`))
		if j < 0 {
			return 0, 0, false
		}
		i = j + 4
	}
	seq, i, ok = digits(p, i)
	if !ok {
		return 0, 0, false
	}
	j := bytes.Index(p[i:], []byte(`"t":`))
	if j < 0 {
		return 0, 0, false
	}
	sent, _, ok = digits(p, i+j+4)
	return seq, sent, ok
}

func digits(p []byte, i int) (int64, int, bool) {
	var v int64
	start := i
	for i < len(p) && p[i] >= '0' && p[i] <= '9' {
		v = v*10 + int64(p[i]-'0')
		i++
	}
	return v, i, i > start
}

// closeTryAgain is the close code of a gateway that could not admit a
// client for now (its key store, history or subscription did not answer
// in time): the client is to connect again, resuming from its last id.
const closeTryAgain = 1013

// maxRetries bounds the reconnects of one connection after 1013.
const maxRetries = 5

// retry reconnects c after the server closed nc with 1013, as a client
// library does: once nc's reader has returned (done), after a backoff
// (100 ms, doubling), with since=<its last id> when resuming. Only
// WebSocket clients do.
func (w *Worker) retry(c *wconn, nc net.Conn, done chan struct{}) {
	defer w.wg.Done()
	<-done
	c.mu.Lock()
	if c.nc == nc {
		_ = nc.Close()
	}
	c.mu.Unlock()
	for c.retries < maxRetries {
		c.retries++ // before open: once it succeeds, the new reader may retry in turn
		t := time.NewTimer(100 * time.Millisecond << (c.retries - 1))
		select {
		case <-w.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		c.mu.Lock()
		replaced := c.nc != nc // closed or reopened meanwhile (Disconnect, Stop, churn)
		c.mu.Unlock()
		if replaced {
			return
		}
		w.retried.Add(1)
		if w.openOver(c, nc) == nil { // not if churn reopened it since the check above
			return
		}
	}
}
