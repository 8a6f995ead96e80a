package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"
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
	absences   int // times it stayed away (chaosPlan.away)
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
// away, if not nil, is called after each planned drop: the client stays
// away until it returns (true: it did stay away, for the report).
func (c *chaosClient) run(ctx context.Context, gws []*chaosGateway, hold func(*rand.Rand) time.Duration, away func(context.Context, *rand.Rand) bool) {
	for ctx.Err() == nil {
		g := gws[c.rng.Intn(len(gws))]
		cctx, cancel := context.WithTimeout(ctx, hold(c.rng))
		err := c.connect(cctx, g)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			c.refused(chaosCause(err))
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(20+c.rng.Intn(80)) * time.Millisecond):
			}
		case err == nil && away != nil:
			if away(ctx, c.rng) {
				c.mu.Lock()
				c.absences++
				c.mu.Unlock()
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
