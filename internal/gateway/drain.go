package gateway

import (
	"context"
	"sync"
	"time"

	"github.com/wspubsub/wspubsub/internal/hub"
)

// drainState is the drain between Run's context ending and the shutdown;
// its zero value is ready.
type drainState struct {
	mu      sync.Mutex
	skipped bool               // SkipDrain was called
	cancel  context.CancelFunc // ends the drain in progress
	pace    hub.Pacer          // tests: paces the batches instead of a ticker
}

// SkipDrain cuts the drain short — the one in progress, or the one Run
// would start: the clients not yet told go at once with 1001, as in a
// shutdown without a drain. The binary calls it on a second SIGTERM or
// SIGINT.
func (g *Gateway) SkipDrain() {
	d := &g.drainer
	d.mu.Lock()
	defer d.mu.Unlock()
	d.skipped = true
	if d.cancel != nil {
		d.cancel()
	}
}

// drain hands the clients to the other nodes over --drain-period: from its
// start /readyz answers 503 {"status":"draining"} (load balancers stop
// sending) and the hub refuses new sessions with 1012; the live ones are
// closed with 1012 in batches spread over the period, so that the nodes
// taking them over are not hit by a reconnect storm, and resuming clients
// lose nothing. The listener stays open meanwhile: the clients that still
// reach this node are told to go elsewhere rather than refused a TCP
// connection. It takes at most the period (and one step); the shutdown
// that follows has --shutdown-timeout of its own.
func (g *Gateway) drain() {
	period := g.cfg.DrainPeriod
	live := g.hub.Live()
	if period <= 0 || live == 0 {
		return // nobody to hand over: shut down at once
	}
	d := &g.drainer
	d.mu.Lock()
	if d.skipped {
		d.mu.Unlock()
		return
	}
	steps := hub.DrainSteps(period)
	ctx, cancel := context.WithTimeout(context.Background(), period+period/time.Duration(steps))
	d.cancel = cancel
	d.mu.Unlock()
	defer cancel()

	g.log.Info("draining: refusing new connections and closing the live ones with 1012, spread over the drain period (signal again to close them all at once)",
		"connections", live, "period", period, "batches", steps)
	start := time.Now()
	r := g.hub.Drain(ctx, period, d.pace)
	if r.Cut {
		g.log.Warn("drain cut short: closing the remaining connections at once",
			"closed", r.Closed, "batches", r.Batches, "took", time.Since(start).Round(time.Millisecond))
		return
	}
	g.log.Info("drained", "closed", r.Closed, "batches", r.Batches, "largest_batch", r.Largest,
		"took", time.Since(start).Round(time.Millisecond))
}
