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
			if w.byServer(c, nc, nil) {
				w.serverClosed.Add(1)
			}
			return
		}
		n += m
		now := time.Now()
		var arrived time.Time
		if s != nil {
			arrived, s.at = s.at, time.Time{}
		}
		off := 0
		for n-off >= 2 {
			op := buf[off] & 0x0f
			plen := int(buf[off+1] & 0x7f)
			hdr := 2
			switch plen {
			case 126:
				if n-off < 4 {
					goto more
				}
				plen, hdr = int(binary.BigEndian.Uint16(buf[off+2:])), 4
			case 127:
				if n-off < 10 {
					goto more
				}
				plen, hdr = int(binary.BigEndian.Uint64(buf[off+2:])), 10
			}
			if hdr+plen > len(buf) {
				nb := make([]byte, hdr+plen+len(buf))
				copy(nb, buf[off:n])
				buf, n, off = nb, n-off, 0
				goto more
			}
			if n-off < hdr+plen {
				goto more
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
				return
			case 9:
				_ = ws.WriteFrame(nc, ws.MaskFrame(ws.NewPongFrame(append([]byte(nil), payload...))))
			}
			off += hdr + plen
		}
	more:
		n = copy(buf, buf[off:n])
	}
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
		if w.open(c) == nil {
			return
		}
	}
}
