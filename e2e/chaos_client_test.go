package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// The chaos test's clients: one key each, over one transport, dropping
// their connection at random and resuming on a random gateway with the
// last id they got.

// chaosClient is one resuming client of one key.
type chaosClient struct {
	key       string
	transport string
	sid       string     // polling and EventSource: one per client, as wspubsub.js does
	rng       *rand.Rand // used by the client's goroutine only
	// lastEventID: EventSource resumes with the Last-Event-ID header
	// (always when set, else on every other connection) instead of since=.
	lastEventID bool

	mu         sync.Mutex
	log        []int    // n of each message received, chaosGapMark for a gap frame
	ids        []string // the id each message came with
	lastID     string   // "" until the first position frame
	lastN      int
	positions  int
	connects   int // connections attempted
	refusals   map[string]int
	unexpected []string // frames that should not have come, first few
	badFrames  int
	sseIDDiff  int // EventSource: id: line differing from the id in the data
}

func newChaosClient(key, transport string, seed int64) *chaosClient {
	return &chaosClient{key: key, transport: transport, rng: rand.New(rand.NewSource(seed)),
		sid: "chaos" + strconv.FormatInt(seed&0xffffff, 36), lastN: -1, refusals: map[string]int{}}
}

func (c *chaosClient) state() (lastID string, lastN int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastID, c.lastN
}

func (c *chaosClient) refused(why string) {
	c.mu.Lock()
	c.refusals[why]++
	c.mu.Unlock()
}

func (c *chaosClient) bad(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.badFrames++
	if len(c.unexpected) < 5 {
		c.unexpected = append(c.unexpected, fmt.Sprintf(format, args...))
	}
}

// handle takes one frame; sseID is the EventSource id: line ("" otherwise).
func (c *chaosClient) handle(frame, sseID string) {
	if why := c.take(frame, sseID); why != "" {
		c.bad("%s: %q", why, frame)
	}
}

// take records frame; it returns why the frame is wrong, or "".
func (c *chaosClient) take(frame, sseID string) string {
	var f struct {
		ID   *string         `json:"id"`
		Gap  bool            `json:"gap"`
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal([]byte(frame), &f); err != nil {
		return "not JSON"
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.transport == chaosSSE && f.ID != nil && sseID != *f.ID {
		c.sseIDDiff++
	}
	switch {
	case f.Gap && f.ID == nil && f.Data == nil:
		c.log = append(c.log, chaosGapMark)
	case f.ID != nil && f.Data == nil:
		c.positions++
		c.lastID = *f.ID
	case f.ID != nil:
		var d struct {
			N *int `json:"n"`
		}
		if err := json.Unmarshal(f.Data, &d); err != nil || d.N == nil {
			return "data without n"
		}
		c.log = append(c.log, *d.N)
		c.ids = append(c.ids, *f.ID)
		c.lastID, c.lastN = *f.ID, *d.N
	default:
		return "frame without id"
	}
	return ""
}

// run connects to random gateways until ctx ends; each connection lives a
// random time (hold) and is then dropped, and the next one resumes from the
// last id received. Refusals and failures are retried after a short pause.
func (c *chaosClient) run(ctx context.Context, gws []*chaosGateway, hold func(*rand.Rand) time.Duration) {
	for ctx.Err() == nil {
		g := gws[c.rng.Intn(len(gws))]
		cctx, cancel := context.WithTimeout(ctx, hold(c.rng))
		err := c.connect(cctx, g.addr)
		cancel()
		if err != nil && ctx.Err() == nil {
			c.refused(chaosCause(err))
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(20+c.rng.Intn(80)) * time.Millisecond):
			}
		}
	}
}

// chaosRefusal is a connection ended by the server (a close code) or
// refused before it started.
type chaosRefusal struct{ what string }

func (r *chaosRefusal) Error() string { return r.what }

func chaosCause(err error) string {
	var r *chaosRefusal
	var ne net.Error
	switch {
	case errors.As(err, &r):
		return r.what
	case errors.Is(err, syscall.ECONNREFUSED):
		return "conn refused"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return "conn lost"
	}
	return "other: " + err.Error()
}

// connect makes one connection and reads it until ctx ends (nil: dropped
// by the client as planned) or it ends otherwise (the error says how).
func (c *chaosClient) connect(ctx context.Context, addr string) error {
	c.mu.Lock()
	c.connects++
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
		return nil
	}
	if err == nil {
		err = errors.New("connection ended")
	}
	return err
}

func (c *chaosClient) connectWS(ctx context.Context, addr string) error {
	since, _ := c.state()
	d := ws.Dialer{Timeout: 2 * time.Second}
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
	for {
		since, _ := c.state()
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		req, _ := http.NewRequestWithContext(pctx, http.MethodGet,
			"http://"+addr+"/websocket?"+c.key+"&sid="+c.sid+"&since="+since, nil)
		req.Header.Set("X-Socket-Transport", "xhrPolling")
		resp, err := chaosHTTP.Do(req)
		if err != nil {
			cancel()
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			if code := resp.Header.Get("X-Wspubsub-Close-Code"); code != "" {
				return &chaosRefusal{"close " + code}
			}
			return &chaosRefusal{fmt.Sprintf("HTTP %d", resp.StatusCode)}
		}
		if len(body) > 0 {
			c.handle(string(body), "")
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}
