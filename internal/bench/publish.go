package bench

import (
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"
)

// publishAll publishes cfg.Messages messages (it returns how many distinct
// sequence numbers it meant to publish, faults included) to random stable keys (or as
// broadcasts), at rate per second when rate > 0, in pipelined batches.
//
// Without a rate it is closed-loop: it keeps at most cfg.Window messages
// (deliveries, for broadcasts) in flight, so it measures what the gateway
// sustains instead of overflowing Redis's buffer for a slow subscriber
// (Redis then drops the subscriber and the messages).
func publishAll(ctx context.Context, pub publisher, cfg Config, stable, readers, rate int, received func() int64, perMsg int64) (intended, toReaders int64, err error) {
	skip := map[int64]bool{}
	for _, s := range cfg.Fault.Skip {
		skip[s] = true
	}
	dup := map[int64]bool{}
	for _, s := range cfg.Fault.Duplicate {
		dup[s] = true
	}
	swap := map[int64]bool{}
	for _, s := range cfg.Fault.Swap {
		swap[s] = true
	}
	batchSize := 1024 // open loop: long pipelines, so the publisher is not what a burst measures
	if rate == 0 && cfg.Window > 0 {
		batchSize = int(max(1, min(256, int64(cfg.Window)/(2*perMsg))))
	}
	if rate > 0 {
		// Publish every millisecond (or less often at low rates), each
		// message at its time: see due below.
		batchSize = max(1, rate/1000)
	}
	broadcast := cfg.Scenario == "broadcast"
	pad := padding(cfg)
	var everyone []byte // a broadcast's head: {"recipients":[every key] (--broadcast-list), or {"broadcast":true
	if broadcast && cfg.BroadcastList {
		everyone = append(everyone, `{"recipients":[`...)
		for k := range stable {
			if k > 0 {
				everyone = append(everyone, ',')
			}
			everyone = append(everyone, '"')
			everyone = append(everyone, cfg.KeyPrefix...)
			everyone = strconv.AppendInt(everyone, int64(k), 10)
			everyone = append(everyone, '"')
		}
		everyone = append(everyone, ']')
	}
	batch := make([][]byte, 0, batchSize+4)
	t0 := time.Now()
	// due is how many messages the rate has asked for by now: a publisher
	// that fell behind (a slow round trip on a saturated box) sends the
	// backlog in its next batch instead of lowering the offered rate.
	due := func() int64 { return int64(time.Since(t0).Seconds() * float64(rate)) }
	if broadcast && everyone == nil {
		everyone = []byte(`{"broadcast":true`)
	}
	var head []byte // scratch: benchMessage copies it
	// arena holds a batch's messages back to back, reused batch after batch
	// (the publishers keep nothing once publish returns): one allocation
	// per message was most of the load tool's cost of publishing a burst.
	var arena []byte
	msg := func(seq int64) []byte {
		start := len(arena)
		if everyone != nil {
			arena = appendBenchMessage(arena, everyone, seq, pad)
		} else {
			k := rand.IntN(stable)
			if k < readers {
				toReaders++
			}
			head = recipientHead(head[:0], cfg.KeyPrefix, k)
			arena = appendBenchMessage(arena, head, seq, pad)
		}
		// Earlier slices keep the old array if arena grows: still theirs.
		return arena[start:len(arena):len(arena)]
	}
	deadline := time.Now().Add(cfg.Duration + time.Minute)
	for seq := int64(0); seq < int64(cfg.Messages); {
		batch, arena = batch[:0], arena[:0]
		n := batchSize
		if rate > 0 {
			n = int(max(int64(batchSize), min(due()-seq, 4096)))
		}
		for len(batch) < n && seq < int64(cfg.Messages) {
			intended++
			switch {
			case skip[seq]:
				toReaders++ // meant to be delivered: the injected loss
			case swap[seq] && seq+1 < int64(cfg.Messages):
				batch = append(batch, msg(seq+1), msg(seq))
				seq++
				intended++
			case dup[seq]:
				m := msg(seq)
				batch = append(batch, m, m)
			default:
				batch = append(batch, msg(seq))
			}
			seq++
		}
		if rate == 0 && cfg.Window > 0 {
			// Wait until this batch fits in the window (always let one through).
			room := int64(cfg.Window) - int64(len(batch))*perMsg
			for {
				inflight := (intended-int64(len(batch))-int64(len(cfg.Fault.Skip)))*perMsg - received()
				if inflight <= 0 || inflight <= room || time.Now().After(deadline) {
					break
				}
				time.Sleep(100 * time.Microsecond)
			}
		}
		if err := pub.publish(ctx, batch); err != nil {
			return intended, toReaders, err
		}
		if rate > 0 {
			// Until the next message is due.
			if d := time.Until(t0.Add(time.Duration(float64(seq) / float64(rate) * float64(time.Second)))); d > 0 {
				time.Sleep(d)
			}
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			break
		}
	}
	return intended, toReaders, nil
}

// benchMessage is head (the envelope's opening up to its routing member)
// followed by the data every scenario sends: the sequence number, the send
// time and the padding. It is built by hand, not with fmt: at a few
// hundred thousand messages a second the load tool's own formatting would
// show in the figures.
func benchMessage(head []byte, seq int64, pad string) []byte {
	return appendBenchMessage(make([]byte, 0, len(head)+64+len(pad)), head, seq, pad)
}

// appendBenchMessage appends benchMessage's bytes to b.
func appendBenchMessage(b, head []byte, seq int64, pad string) []byte {
	b = append(b, head...)
	b = append(b, `,"data":{"s":`...)
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, `,"t":`...)
	b = strconv.AppendInt(b, time.Now().UnixNano(), 10)
	b = append(b, `,"p":"`...)
	b = append(b, pad...)
	return append(b, `"}}`...)
}

// recipientHead appends {"recipients":["<prefix><k>"] to dst.
func recipientHead(dst []byte, prefix string, k int) []byte {
	dst = append(dst, `{"recipients":["`...)
	dst = append(dst, prefix...)
	dst = strconv.AppendInt(dst, int64(k), 10)
	return append(dst, `"]`...)
}

func padding(cfg Config) string {
	if cfg.PayloadBytes > 40 {
		return strings.Repeat("x", cfg.PayloadBytes-40)
	}
	return ""
}

// runResume is the resume scenario: every client receives one message (so
// that it holds the id of a message it got), goes away, Behind messages
// per key are published durably meanwhile, then every client reconnects
// with since=<its last id> and is caught up from the history.
func runResume(ctx context.Context, pub publisher, cfg Config, workers []worker, received func() int64, res *Result) error {
	n := int64(cfg.Conns)
	rr := &ResumeResult{Clients: cfg.Conns, BehindPerKey: cfg.Behind}
	res.Resume = rr
	if err := publishPerKey(ctx, pub, cfg, 0, 1); err != nil {
		return err
	}
	res.Published = n
	waitReceived(received, n, cfg.Drain)

	if err := eachWorker(workers, func(w worker) error { return w.disconnect() }); err != nil {
		return err
	}
	away := time.Now()
	if err := publishPerKey(ctx, pub, cfg, n, cfg.Behind); err != nil {
		return err
	}
	rr.AwayPublished = n * int64(cfg.Behind)
	rr.AwayPublishSeconds = time.Since(away).Seconds()
	res.Published += rr.AwayPublished
	res.Expected = res.Published
	rr.CatchupExpected = rr.AwayPublished

	before := received()
	back := time.Now()
	var failures int
	var mu sync.Mutex
	err := eachWorker(workers, func(w worker) error {
		f, err := w.reconnect()
		mu.Lock()
		failures += f
		mu.Unlock()
		return err
	})
	if err != nil {
		return err
	}
	rr.ReconnectFailures, rr.Reconnected = failures, cfg.Conns-failures
	end := waitReceived(received, res.Expected, cfg.Drain)
	rr.CatchupDelivered = received() - before
	rr.CatchupSeconds = end.Sub(back).Seconds()
	if rr.CatchupSeconds > 0 {
		rr.CatchupPerSec = float64(rr.CatchupDelivered) / rr.CatchupSeconds
	}
	return nil
}

// eachWorker runs f on every worker at once and returns the first error.
func eachWorker(workers []worker, f func(worker) error) error {
	errs := make(chan error, len(workers))
	for _, w := range workers {
		go func() { errs <- f(w) }()
	}
	var first error
	for range workers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// waitReceived waits until want deliveries arrived, or none has for
// drain; it returns when the last one came.
func waitReceived(received func() int64, want int64, drain time.Duration) time.Time {
	last, lastChange := received(), time.Now()
	for last < want && time.Since(lastChange) < drain {
		time.Sleep(2 * time.Millisecond)
		if n := received(); n != last {
			last, lastChange = n, time.Now()
		}
	}
	return lastChange
}

// publishPerKey publishes perKey messages to each key in turn (key i gets
// sequence numbers seq0+i, seq0+n+i, …: each key's in order), in pipelined
// batches; nobody is reading meanwhile, so without a window.
func publishPerKey(ctx context.Context, pub publisher, cfg Config, seq0 int64, perKey int) error {
	pad := padding(cfg)
	batch := make([][]byte, 0, 256)
	var head []byte // scratch: benchMessage copies it
	seq := seq0
	for range perKey {
		for i := range cfg.Conns {
			head = recipientHead(head[:0], cfg.KeyPrefix, i)
			batch = append(batch, benchMessage(head, seq, pad))
			seq++
			if len(batch) == cap(batch) {
				if err := pub.publish(ctx, batch); err != nil {
					return err
				}
				batch = batch[:0]
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if len(batch) > 0 {
		return pub.publish(ctx, batch)
	}
	return nil
}
