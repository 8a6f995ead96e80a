package broker

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
)

// maxRecordBatch bounds the messages of one FCALL wspubsub_publish_batch:
// Redis runs a call whole, holding everything else meanwhile (≈ 1 ms for
// 64 here).
const maxRecordBatch = 64

// recordQueue gathers concurrent Record calls (concurrent POST /publish
// requests) into one FCALL wspubsub_publish_batch: one round trip and one
// function call for all, less Redis CPU per message. Nothing waits for a
// batch to fill: a call finding no batch in flight sends at once (alone:
// FCALL wspubsub_publish); calls made meanwhile go together in the next.
type recordQueue struct {
	mu      sync.Mutex
	pending []*recordCall
	busy    bool // a batch is being sent
	// send records a batch: (*Redis).recordBatch unless a test sets it.
	send func(ctx context.Context, r *Redis, calls []*recordCall)
}

type recordCall struct {
	msg  []byte
	idem string
	rec  Recorded
	err  error
	done chan struct{}
}

// record records msg through q's batches and waits for its answer (or
// ctx: the message may then be recorded or not, as after any timeout).
func (q *recordQueue) record(ctx context.Context, r *Redis, msg []byte, idem string) (Recorded, error) {
	c := &recordCall{msg: msg, idem: idem, done: make(chan struct{})}
	q.mu.Lock()
	q.pending = append(q.pending, c)
	lead := !q.busy
	q.busy = true
	q.mu.Unlock()
	if lead {
		// Not cancelled with this request: the batch carries others'. In
		// its own goroutine, so that this request can give up on its
		// context as the others do.
		go q.flush(context.WithoutCancel(ctx), r)
	}
	select {
	case <-c.done:
		return c.rec, c.err
	case <-ctx.Done():
		return Recorded{}, fmt.Errorf("recording a message in Redis: %w", ctx.Err())
	}
}

// flush sends one batch of what is pending, then the next from a new
// goroutine, until none is left. Whatever happens to a batch (a panic
// included: an error for its calls), its calls are answered and the queue
// goes on: a queue left busy would hold every later Record until its
// context ends.
func (q *recordQueue) flush(ctx context.Context, r *Redis) {
	q.mu.Lock()
	batch := q.pending[:min(len(q.pending), maxRecordBatch)]
	q.pending = q.pending[len(batch):]
	q.mu.Unlock()
	defer func() {
		if v := recover(); v != nil {
			err := fmt.Errorf("recording %d messages in Redis: internal error: %v", len(batch), v)
			r.cfg.Logger.Error("history: recording a batch failed (a bug)", "err", err, "stack", string(debug.Stack()))
			for _, c := range batch {
				c.rec, c.err = Recorded{}, err
			}
		}
		for _, c := range batch {
			close(c.done)
		}
		q.mu.Lock()
		more := len(q.pending) > 0
		q.busy = more
		q.mu.Unlock()
		if more {
			go q.flush(ctx, r)
		}
	}()
	if q.send != nil {
		q.send(ctx, r, batch)
	} else {
		r.recordBatch(ctx, batch)
	}
}

// recordBatch records the calls' messages in one function call and sets
// each call's answer.
func (r *Redis) recordBatch(ctx context.Context, calls []*recordCall) {
	if len(calls) == 1 {
		c := calls[0]
		v, err := r.fcall(ctx, "wspubsub_publish", nil, c.msg, c.idem)
		if err != nil {
			c.err = fmt.Errorf("recording a message in Redis: %w", err)
			return
		}
		c.rec, c.err = parseRecorded(v)
		return
	}
	args := make([]any, 0, 2*len(calls))
	for _, c := range calls {
		args = append(args, c.msg, c.idem)
	}
	v, err := r.fcall(ctx, "wspubsub_publish_batch", nil, args...)
	list, ok := v.([]any)
	if err == nil && (!ok || len(list) != len(calls)) {
		err = fmt.Errorf("unexpected answer %v", v)
	}
	for i, c := range calls {
		if err != nil {
			c.err = fmt.Errorf("recording %d messages in Redis: %w", len(calls), err)
		} else if e, ok := list[i].(error); ok {
			c.err = fmt.Errorf("recording a message in Redis: %w", e)
		} else {
			c.rec, c.err = parseRecorded(list[i])
		}
	}
}
