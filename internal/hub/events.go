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
	ch  chan event

	ctx      context.Context // publishing; cancelled by abort
	abort    context.CancelFunc
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

func newEventPump(cfg Config, log *slog.Logger) *eventPump {
	p := &eventPump{cfg: cfg, log: log, m: cfg.Metrics, ch: make(chan event, eventQueue),
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
	select {
	case p.ch <- e:
	default:
		p.m.EventsDropped.Inc()
		p.log.Warn("event dropped: event queue full", "connected", e.connected, "conn", e.conn)
	}
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
	batch := make([]broker.Outgoing, 0, 256)
	for {
		select {
		case e := <-p.ch:
			batch = append(batch[:0], p.encode(e))
		case <-p.stop:
			if len(p.ch) == 0 {
				return
			}
			continue
		}
	fill:
		for len(batch) < cap(batch) {
			select {
			case e := <-p.ch:
				batch = append(batch, p.encode(e))
			default:
				break fill
			}
		}
		n := len(batch)
		if !p.publishRetrying(batch) {
			p.m.EventsDropped.Add(float64(len(batch) + len(p.ch)))
			p.log.Warn("events dropped: broker unreachable at shutdown", "events", len(batch)+len(p.ch))
			return
		}
		p.m.EventsPublished.Add(float64(n))
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
