package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// The chaos clients' three transports: each connects, resumes from the
// client's last id and reads until the connection ends.

// connect makes one connection and reads it until ctx ends (nil: dropped
// by the client as planned) or it ends otherwise (the error says how).
func (c *chaosClient) connect(ctx context.Context, g *chaosGateway) error {
	addr := g.addr
	c.mu.Lock()
	c.connects++
	c.conns = append(c.conns, &chaosConn{gw: g.name, since: c.lastID, start: time.Since(c.t0), first: -1, last: -1})
	c.cur = len(c.conns) - 1
	c.mu.Unlock()
	var err error
	switch c.transport {
	case chaosWS:
		err = c.connectWS(ctx, addr)
	case chaosSSE:
		err = c.connectSSE(ctx, addr)
	default:
		err = c.connectPolling(ctx, addr)
	}
	if ctx.Err() != nil {
		err = nil
	} else if err == nil {
		err = errors.New("connection ended")
	}
	c.mu.Lock()
	cn := c.conn()
	cn.end, cn.why = time.Since(c.t0), "dropped"
	if err != nil {
		cn.why = chaosCause(err)
	}
	c.cur = -1
	c.mu.Unlock()
	return err
}

func (c *chaosClient) connectWS(ctx context.Context, addr string) error {
	since, _ := c.state()
	c.mu.Lock()
	c.conn().since = since
	c.mu.Unlock()
	d := ws.Dialer{Timeout: patience}
	conn, br, _, err := d.Dial(ctx, "ws://"+addr+"/websocket?"+c.key+"&since="+since)
	if err != nil {
		var se ws.StatusError
		if errors.As(err, &se) {
			return &chaosRefusal{fmt.Sprintf("HTTP %d", int(se))}
		}
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r := io.Reader(conn)
	if br != nil {
		r = io.MultiReader(br, conn)
	}
	for {
		f, err := ws.ReadFrame(r)
		if err != nil {
			return err
		}
		switch f.Header.OpCode {
		case ws.OpText, ws.OpBinary:
			c.handle(string(f.Payload), "")
		case ws.OpPing:
			_ = wsutil.WriteClientMessage(conn, ws.OpPong, f.Payload)
		case ws.OpClose:
			code, _ := ws.ParseCloseFrameData(f.Payload)
			_ = wsutil.WriteClientMessage(conn, ws.OpClose, ws.NewCloseFrameBody(code, ""))
			return &chaosRefusal{fmt.Sprintf("close %d", code)}
		}
	}
}

func (c *chaosClient) connectSSE(ctx context.Context, addr string) error {
	since, _ := c.state()
	c.mu.Lock()
	header := since != "" && (c.lastEventID || c.connects%2 == 0)
	if cn := c.conn(); cn != nil {
		cn.since, cn.header = since, header
	}
	c.mu.Unlock()
	u := "http://" + addr + "/websocket?" + c.key + "&sid=" + c.sid
	if !header {
		u += "&since=" + since
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	req.Header.Set("Accept", "text/event-stream")
	if header {
		req.Header.Set("Last-Event-ID", since)
	}
	resp, err := chaosHTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return &chaosRefusal{fmt.Sprintf("HTTP %d", resp.StatusCode)}
	}
	br := bufio.NewReader(resp.Body)
	typ, id, data := "message", "", []string(nil)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if data != nil {
				if typ == "close" {
					var cl struct{ Code int }
					_ = json.Unmarshal([]byte(strings.Join(data, "\n")), &cl)
					return &chaosRefusal{fmt.Sprintf("close %d", cl.Code)}
				}
				c.handle(strings.Join(data, "\n"), id)
			}
			typ, id, data = "message", "", nil
		case strings.HasPrefix(line, "event: "):
			typ = line[len("event: "):]
		case strings.HasPrefix(line, "id: "):
			id = line[len("id: "):]
		case strings.HasPrefix(line, "data: "):
			data = append(data, line[len("data: "):])
		}
	}
}

// connectPolling polls until ctx ends, naming the last id received on every
// poll.
func (c *chaosClient) connectPolling(ctx context.Context, addr string) error {
	for first := true; ; first = false {
		since, _ := c.state()
		c.mu.Lock()
		cn := c.conn()
		if first {
			cn.since = since
		}
		cn.polls = append(cn.polls, chaosPoll{at: time.Since(c.t0), since: since})
		poll := &cn.polls[len(cn.polls)-1]
		c.mu.Unlock()
		body, err := c.poll(ctx, addr, since)
		c.mu.Lock()
		poll.took = time.Since(c.t0) - poll.at
		switch {
		case err != nil && ctx.Err() != nil:
			poll.answer = "given up (dropped)"
		case err != nil:
			poll.answer = chaosCause(err)
		case body == "":
			poll.answer = "empty"
		}
		c.mu.Unlock()
		if err != nil {
			return err
		}
		if body != "" {
			c.handle(body, "")
			c.mu.Lock()
			poll.answer = chaosShort(body)
			c.mu.Unlock()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// poll is one poll naming since; it returns the answer's body.
func (c *chaosClient) poll(ctx context.Context, addr, since string) (string, error) {
	pctx, cancel := context.WithTimeout(ctx, patience)
	defer cancel()
	req, _ := http.NewRequestWithContext(pctx, http.MethodGet,
		"http://"+addr+"/websocket?"+c.key+"&sid="+c.sid+"&since="+since, nil)
	req.Header.Set("X-Socket-Transport", "xhrPolling")
	resp, err := chaosHTTP.Do(req)
	if err != nil {
		return "", err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		if code := resp.Header.Get("X-Wspubsub-Close-Code"); code != "" {
			return "", &chaosRefusal{"close " + code}
		}
		return "", &chaosRefusal{fmt.Sprintf("HTTP %d", resp.StatusCode)}
	}
	return string(body), nil
}

// chaosShort is a frame as the diagnostics show it: n=…, gap, or the
// position it gives.
func chaosShort(frame string) string {
	var f struct {
		ID   *string `json:"id"`
		Gap  bool    `json:"gap"`
		Data *struct {
			N *int `json:"n"`
		} `json:"data"`
	}
	switch err := json.Unmarshal([]byte(frame), &f); {
	case err == nil && f.Data != nil && f.Data.N != nil:
		return fmt.Sprintf("n=%d", *f.Data.N)
	case err == nil && f.Gap:
		return "gap"
	case err == nil && f.ID != nil && f.Data == nil:
		return "position " + *f.ID
	case len(frame) > 60:
		return frame[:57] + "..."
	}
	return frame
}
