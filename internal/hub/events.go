package hub

import (
	"context"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/metrics"
)

// eventQueue bounds events waiting for the broker (e.g. while Redis is down).
const eventQueue = 1 << 16

// eventBatch is the most events published in one pipeline.
const eventBatch = 256

type event struct {
	upstream  []byte // client text for the upstream channel, when non-nil
	connected bool
	key       string
	conn      uint64
	transport string
	at        time.Time
}

// eventPump publishes connected/disconnected events in order from one
// goroutine, batching them into pipelines when the broker supports it and
// retrying while the broker is down, so connects never wait on Redis.
type eventPump struct {
	cfg Config
	log *slog.Logger
	m   *metrics.Metrics

	// The queue is a slice that grows with the backlog and is let go once
	// drained, not a channel of eventQueue slots: those would stay
	// resident (≈ 6 MB) once a connect storm had passed through them.
	mu    sync.Mutex
	queue []event
	wake  chan struct{} // one token: the queue went from empty to not

	ctx      context.Context // publishing; cancelled by abort
	abort    context.CancelFunc
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

func newEventPump(cfg Config, log *slog.Logger) *eventPump {
	p := &eventPump{cfg: cfg, log: log, m: cfg.Metrics, wake: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	p.ctx, p.abort = context.WithCancel(context.Background())
	if cfg.Events == nil {
		close(p.done)
	} else {
		go p.run()
	}
	return p
}

func (p *eventPump) emit(e event) {
	if p.cfg.Events == nil {
		return
	}
	p.mu.Lock()
	full := len(p.queue) >= eventQueue
	if !full {
		p.queue = append(p.queue, e)
	}
	first := len(p.queue) == 1
	p.mu.Unlock()
	if full {
		p.m.EventsDropped.Inc()
		p.log.Warn("event dropped: event queue full", "connected", e.connected, "conn", e.conn)
		return
	}
	if first {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// take returns everything queued and gives the queue dst's storage (the
// slices swap: no copy). A queue that grew large is let go once drained
// rather than kept.
func (p *eventPump) take(dst []event) []event {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.queue
	p.queue = dst[:0]
	if cap(p.queue) > 4*eventBatch {
		p.queue = nil
	}
	return out
}

func (p *eventPump) queued() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.queue)
}

func (p *eventPump) encode(e event) broker.Outgoing {
	if e.upstream != nil {
		b, _ := json.Marshal(struct {
			Key  string `json:"key"`
			Data string `json:"data"`
			Conn string `json:"conn"`
			At   string `json:"at"`
		}{e.key, string(e.upstream), strconv.FormatUint(e.conn, 10), e.at.UTC().Format(time.RFC3339Nano)})
		return broker.Outgoing{Channel: p.cfg.UpstreamChannel, Payload: b}
	}
	ch, name := p.cfg.DisconnectedChannel, "disconnected"
	if e.connected {
		ch, name = p.cfg.ConnectedChannel, "connected"
	}
	if !p.cfg.JSONEvents {
		return broker.Outgoing{Channel: ch, Payload: []byte(e.key)}
	}
	b, _ := json.Marshal(struct {
		Event     string `json:"event"`
		Key       string `json:"key"`
		Conn      string `json:"conn"`
		Node      string `json:"node"`
		Transport string `json:"transport"`
		At        string `json:"at"`
	}{name, e.key, strconv.FormatUint(e.conn, 10), p.cfg.NodeID, e.transport, e.at.UTC().Format(time.RFC3339Nano)})
	return broker.Outgoing{Channel: ch, Payload: b}
}

// run publishes events until flush stops it. It does not follow the hub's
// context: events of connections closed during shutdown must still go out.
func (p *eventPump) run() {
	defer close(p.done)
	var taken []event
	batch := make([]broker.Outgoing, 0, eventBatch)
	for {
		taken = p.take(taken)
		if len(taken) == 0 {
			select {
			case <-p.wake:
				continue
			case <-p.stop:
				if p.queued() == 0 {
					return
				}
				continue
			}
		}
		for i := 0; i < len(taken); i += eventBatch {
			batch = batch[:0]
			for _, e := range taken[i:min(i+eventBatch, len(taken))] {
				batch = append(batch, p.encode(e))
			}
			n := len(batch)
			if !p.publishRetrying(batch) {
				lost := len(taken) - i + p.queued()
				p.m.EventsDropped.Add(float64(lost))
				p.log.Warn("events dropped: broker unreachable at shutdown", "events", lost)
				return
			}
			p.m.EventsPublished.Add(float64(n))
		}
		clear(taken)
	}
}

// publishRetrying retries with jittered backoff until the batch is out or
// the pump is aborted.
func (p *eventPump) publishRetrying(batch []broker.Outgoing) bool {
	for attempt := 0; ; attempt++ {
		err := p.publish(p.ctx, &batch)
		if err == nil {
			return true
		}
		if attempt == 0 {
			p.log.Warn("publishing events failed; retrying", "events", len(batch), "err", err)
		}
		d := time.Duration(rand.Int64N(int64(50*time.Millisecond) << min(attempt, 6)))
		select {
		case <-p.ctx.Done():
			return false
		case <-time.After(d):
		}
	}
}

// publish sends batch; on failure *batch keeps only what was not sent.
func (p *eventPump) publish(ctx context.Context, batch *[]broker.Outgoing) error {
	if b, ok := p.cfg.Events.(broker.Batcher); ok && len(*batch) > 1 {
		return b.PublishBatch(ctx, *batch)
	}
	for i, o := range *batch {
		if err := p.cfg.Events.Publish(ctx, o.Channel, o.Payload); err != nil {
			*batch = (*batch)[i:]
			return err
		}
	}
	return nil
}

// flush lets the pump publish what is queued and stop, waiting until it
// has or ctx ends (then the rest is dropped and counted).
func (p *eventPump) flush(ctx context.Context) {
	p.stopOnce.Do(func() { close(p.stop) })
	select {
	case <-p.done:
	case <-ctx.Done():
		p.abort()
		<-p.done
	}
}
