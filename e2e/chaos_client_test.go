package e2e

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"slices"
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

	t0 time.Time // the diagnostics count from it (the test's start)

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
	// For the diagnostics, per entry of log: when it came, since t0, and
	// on which connection (an index into conns, -1 for none).
	recvAt   []time.Duration
	recvConn []int
	conns    []*chaosConn // every connection attempted, in order
	cur      int          // index of the connection being read, -1 for none
}

func newChaosClient(key, transport string, seed int64) *chaosClient {
	return &chaosClient{key: key, transport: transport, rng: rand.New(rand.NewSource(seed)), t0: time.Now(),
		sid: "chaos" + strconv.FormatInt(seed&0xffffff, 36), lastN: -1, refusals: map[string]int{}, cur: -1}
}

// chaosConn is one connection of a client, for the diagnostics of a lost
// message: where, from where on, when, how it ended and what it got.
type chaosConn struct {
	gw         string
	since      string // the id it resumed from
	header     bool   // EventSource: since sent as Last-Event-ID
	start, end time.Duration
	why        string // how it ended: "dropped" (as planned), or the refusal or error
	got        int    // messages received on it
	first      int    // n of its first and last message (-1: none)
	last       int
	polls      []chaosPoll // polling: each poll
}

// chaosPoll is one poll of a polling connection.
type chaosPoll struct {
	at, took time.Duration
	since    string
	answer   string // "n=…", "empty", or what failed
}

// format shows cn; name shows an id (as the n it came with, when known).
func (cn *chaosConn) format(name func(id string) string) string {
	via := "since"
	if cn.header {
		via = "Last-Event-ID"
	}
	got := "nothing"
	if cn.got > 0 {
		got = fmt.Sprintf("%d messages, n=%d..%d", cn.got, cn.first, cn.last)
	}
	end := "…"
	if cn.why != "" {
		end = fmt.Sprintf("+%v (%s)", chaosRound(cn.end), cn.why)
	}
	return fmt.Sprintf("%s %s=%s +%v..%s got %s", cn.gw, via, name(cn.since), chaosRound(cn.start), end, got)
}

// conn returns the current connection, or nil; under c.mu.
func (c *chaosClient) conn() *chaosConn {
	if c.cur < 0 {
		return nil
	}
	return c.conns[c.cur]
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
	record := func(n int) {
		c.log = append(c.log, n)
		c.recvAt = append(c.recvAt, time.Since(c.t0))
		c.recvConn = append(c.recvConn, c.cur)
		if cn := c.conn(); cn != nil && n != chaosGapMark {
			if cn.got == 0 {
				cn.first = n
			}
			cn.got++
			cn.last = n
		}
	}
	switch {
	case f.Gap && f.ID == nil && f.Data == nil:
		record(chaosGapMark)
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
		record(*d.N)
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
		err := c.connect(cctx, g)
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
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
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

// lostReport explains, for the diagnostics, the first max messages of want
// (the key's, in order) that c never received: the id each was
// acknowledged with, by which gateway and when, what c received around it
// and its connections (and, polling, its polls) at that time. Under c.mu.
func (c *chaosClient) lostReport(want []int, pub *chaosPublisher, max int) string {
	at := make(map[int]int, len(c.log)) // n → index in log of its first receipt
	for i, n := range c.log {
		if _, ok := at[n]; !ok && n != chaosGapMark {
			at[n] = i
		}
	}
	// Ids are shown as the message they came with: id(n=…).
	nOf := make(map[string]int, len(c.ids))
	j := 0
	for _, n := range c.log {
		if n != chaosGapMark {
			nOf[c.ids[j]] = n
			j++
		}
	}
	name := func(id string) string {
		if n, ok := nOf[id]; ok {
			return fmt.Sprintf("id(n=%d)", n)
		}
		return strconv.Quote(id)
	}
	var b strings.Builder
	var lost []int
	for _, n := range want {
		if _, ok := at[n]; !ok {
			lost = append(lost, n)
		}
	}
	fmt.Fprintf(&b, "%s (%s, sid %s): lost n=%v", c.key, c.transport, c.sid, lost[:min(len(lost), 20)])
	if len(lost) > 20 {
		fmt.Fprintf(&b, " (and %d more)", len(lost)-20)
	}
	received := func(n int) string {
		i := at[n]
		conn := "no connection"
		if k := c.recvConn[i]; k >= 0 {
			conn = fmt.Sprintf("#%d (%s)", k, c.conns[k].gw)
		}
		return fmt.Sprintf("n=%d (id %s) received +%v on %s", n, c.ids[c.idIndex(i)], chaosRound(c.recvAt[i]), conn)
	}
	for li, n := range lost[:min(len(lost), max)] {
		a := pub.ackOf(n)
		fmt.Fprintf(&b, "\n  n=%d id %s: acknowledged (%s) by %s at +%v", n, pub.idOf(n), a.status, a.gw, chaosRound(a.at))
		if len(a.attempts) > 0 {
			fmt.Fprintf(&b, " after failed attempts %s", strings.Join(a.attempts, ", "))
		}
		// The nearest messages of the key received before and after it.
		wi := slices.Index(want, n)
		shown := map[int]bool{}
		for j := wi - 1; j >= 0; j-- {
			if _, ok := at[want[j]]; ok {
				fmt.Fprintf(&b, "\n    before it: %s", received(want[j]))
				shown[c.recvConn[at[want[j]]]] = true
				break
			}
		}
		for j := wi + 1; j < len(want); j++ {
			if _, ok := at[want[j]]; ok {
				fmt.Fprintf(&b, "\n    after it:  %s", received(want[j]))
				shown[c.recvConn[at[want[j]]]] = true
				break
			}
		}
		if li > 0 && a.at-pub.ackOf(lost[li-1]).at < time.Second {
			b.WriteString("\n    (connections: as above)")
			continue
		}
		// The connections around the acknowledgement (at most 8).
		from, to := a.at-time.Second, a.at+time.Second
		var idx []int
		for k, cn := range c.conns {
			end := cn.end
			if cn.why == "" {
				end = to
			}
			if shown[k] || (cn.start <= to && end >= from) {
				idx = append(idx, k)
			}
		}
		if len(idx) > 8 {
			// The 8 that started nearest to the acknowledgement.
			slices.SortFunc(idx, func(x, y int) int {
				return cmp.Compare((c.conns[x].start - a.at).Abs(), (c.conns[y].start - a.at).Abs())
			})
			idx = idx[:8]
			slices.Sort(idx)
		}
		for _, k := range idx {
			cn := c.conns[k]
			fmt.Fprintf(&b, "\n    #%d %s", k, cn.format(name))
			var polls []string
			for _, p := range cn.polls {
				if p.at <= a.at+500*time.Millisecond && p.at+p.took >= a.at-200*time.Millisecond {
					polls = append(polls, fmt.Sprintf("+%v since=%s → %s (%v)", chaosRound(p.at), name(p.since), p.answer, chaosRound(p.took)))
				}
			}
			if len(polls) > 12 {
				polls = append(polls[:12], fmt.Sprintf("… %d more", len(polls)-12))
			}
			if len(polls) > 0 {
				fmt.Fprintf(&b, "\n      polls: %s", strings.Join(polls, "; "))
			}
		}
	}
	if len(lost) > max {
		fmt.Fprintf(&b, "\n  (the other %d not shown)", len(lost)-max)
	}
	return b.String()
}

// idIndex maps an index in c.log to the index in c.ids (gap marks have no
// id); under c.mu.
func (c *chaosClient) idIndex(i int) int {
	j := 0
	for _, n := range c.log[:i] {
		if n != chaosGapMark {
			j++
		}
	}
	return j
}
