package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The chaos test's publisher: numbered messages through POST /publish of a
// random gateway, retried with the same idempotency key until acknowledged.

// chaosPublisher publishes numbered messages to keys[n%len(keys)] through
// POST /publish of a random gateway, retrying with the same idempotency key
// until it is acknowledged.
type chaosPublisher struct {
	gws     []*chaosGateway
	keys    []string
	timeout time.Duration // of one attempt
	giveUp  time.Duration // per message
	// impatience is the share of attempts given a timeout of 0-3 ms.
	impatience float64

	acked    atomic.Int64   // messages acknowledged
	keyAcked []atomic.Int64 // messages acknowledged per key, by publish (index in keys)
	retries  atomic.Int64   // attempts beyond the first
	dupAcks  atomic.Int64   // acknowledged as "duplicate" (an earlier attempt had recorded it)
	t0       time.Time      // the test's start, which the diagnostics count from
	// gate: every attempt holds it shared, so that pause can wait until no
	// attempt is in flight.
	gate   sync.RWMutex
	mu     sync.Mutex
	ids    map[int]string // the id acknowledged for n
	acks   map[int]chaosAck
	failed []string       // why attempts failed, first few
	fails  map[string]int // attempts failed, by cause
}

// chaosAck is how message n came to be acknowledged, for the diagnostics
// of a lost message.
type chaosAck struct {
	gw       string        // the gateway whose answer acknowledged it
	at       time.Duration // when, since t0
	status   string        // accepted or duplicate
	attempts []string      // the attempts before it, first few: when, where, outcome
}

func newChaosPublisher(gws []*chaosGateway, keys []string) *chaosPublisher {
	return &chaosPublisher{gws: gws, keys: keys, keyAcked: make([]atomic.Int64, len(keys)),
		timeout: 2 * time.Second, giveUp: 60 * time.Second, t0: time.Now(), ids: map[int]string{}, acks: map[int]chaosAck{}, fails: map[string]int{}}
}

func (p *chaosPublisher) fail(cause string, detail string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fails[cause]++
	if len(p.failed) < 10 {
		p.failed = append(p.failed, detail)
	}
}

// publish sends message n to keys[n%len(keys)] until acknowledged; ctx
// ends it early.
func (p *chaosPublisher) publish(ctx context.Context, rng *rand.Rand, n int) error {
	if err := p.publishTo(ctx, rng, p.keys[n%len(p.keys)], n); err != nil {
		return err
	}
	p.keyAcked[n%len(p.keys)].Add(1)
	return nil
}

// pause waits until no attempt is in flight and holds new ones back until
// the returned resume is called. An attempt whose answer is lost may still
// have been recorded; a Redis without persistence that is killed then
// forgets the idempotency record with it, and the retry would be recorded
// (and delivered) a second time: pausing around such a kill keeps that
// known limit out of a run that counts duplicates.
func (p *chaosPublisher) pause() (resume func()) {
	p.gate.Lock()
	return p.gate.Unlock
}

// publishTo sends {"n":n} to key until acknowledged, every attempt with the
// idempotency key chaos-<n>.
func (p *chaosPublisher) publishTo(ctx context.Context, rng *rand.Rand, key string, n int) error {
	body := fmt.Sprintf(`{"recipients":[%q],"data":{"n":%d}}`, key, n)
	idem := fmt.Sprintf("chaos-%d", n)
	start := time.Now()
	var tried []string // for the diagnostics
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			p.retries.Add(1)
			if time.Since(start) > p.giveUp {
				return fmt.Errorf("message %d not acknowledged within %v", n, p.giveUp)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(10+rng.Intn(10*min(attempt, 10))) * time.Millisecond):
			}
		}
		g := p.gws[rng.Intn(len(p.gws))]
		timeout := p.timeout
		if p.impatience > 0 && rng.Float64() < p.impatience {
			// A publisher giving up early: the gateway may well record
			// the message after all, and the retry must not record it
			// again.
			timeout = time.Duration(rng.Intn(3000)) * time.Microsecond
		}
		sent := time.Since(p.t0)
		p.gate.RLock()
		status, ids, err := p.attempt(ctx, g, body, idem, timeout)
		p.gate.RUnlock()
		if len(tried) < 6 && (err != nil || (status != "accepted" && status != "duplicate")) {
			what := status
			if err != nil {
				what = err.Error()
				if i := strings.LastIndex(what, ": "); i >= 0 {
					what = what[i+2:]
				}
			}
			tried = append(tried, fmt.Sprintf("+%v %s (timeout %v): %s", chaosRound(sent), g.name, timeout, what))
		}
		switch {
		case err != nil:
			cause := "error"
			var ne net.Error
			switch {
			case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
				cause = "timeout"
			case errors.Is(err, syscall.ECONNREFUSED):
				cause = "refused"
			case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				cause = "reset"
			}
			p.fail(cause, fmt.Sprintf("n=%d via %s: %v", n, g.name, err))
			continue
		case status == "accepted" || status == "duplicate":
			if len(ids) != 1 {
				return fmt.Errorf("message %d acknowledged with ids %v, want one", n, ids)
			}
			if status == "duplicate" {
				p.dupAcks.Add(1)
			}
			p.mu.Lock()
			p.ids[n] = ids[0]
			p.acks[n] = chaosAck{gw: g.name, at: time.Since(p.t0), status: status, attempts: tried}
			p.mu.Unlock()
			p.acked.Add(1)
			return nil
		default:
			p.fail(status, fmt.Sprintf("n=%d via %s: %s", n, g.name, status))
		}
	}
}

// attempt is one POST; status is the acknowledgement's status, or the
// HTTP status and body when it was not 202.
func (p *chaosPublisher) attempt(ctx context.Context, g *chaosGateway, body, idem string, timeout time.Duration) (string, []string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+g.addr+"/publish", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", idem)
	resp, err := chaosHTTP.Do(req)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", nil, err
	}
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Sprintf("HTTP %d", resp.StatusCode), nil, nil
	}
	var ack struct {
		Status string   `json:"status"`
		IDs    []string `json:"ids"`
	}
	if err := json.Unmarshal(b, &ack); err != nil {
		return "", nil, fmt.Errorf("202 with %q: %v", b, err)
	}
	return ack.Status, ack.IDs, nil
}

// ackOf returns how n was acknowledged.
func (p *chaosPublisher) ackOf(n int) chaosAck {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.acks[n]
}

// chaosRound rounds d for the diagnostics: milliseconds are what matter.
func chaosRound(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

// idOf returns the id acknowledged for n.
func (p *chaosPublisher) idOf(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ids[n]
}
