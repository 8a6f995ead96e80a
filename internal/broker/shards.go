package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The routed subscription is one connection per Redis server that owns
// subscribed channels: the single Redis, or each master of a cluster (a
// sharded channel is served by the master of its slot). Their subscriptions
// are managed here rather than by go-redis's reconnection, which subscribes
// to all of a connection's channels again in one command: a cluster refuses
// a command over several slots (CROSSSLOT). A lost connection is dropped
// and its channels subscribed anew on whichever master owns them by then
// (after a failover, the promoted replica), one command per slot.
//
// Liveness: each connection also carries a probe channel of its own; every
// probe interval the node publishes on it and expects a probe back within
// two intervals. Probes that do not come back mean the subscription
// stopped delivering without an error (a known failure of pub/sub after a
// failover): the connection is dropped and rebuilt like a lost one.

// shards is runRouted's state, owned by its goroutine.
type shards struct {
	r         *Redis
	h         Handler
	byAddr    map[string]*shardSub
	owner     map[string]*shardSub // channel → connection
	events    chan shardEvent
	rebuild   map[string]bool // channels to subscribe again after a loss
	retry     *time.Timer
	scheduled bool                     // retry is armed
	attempt   int                      // resubscriptions since the last success
	nodes     map[string]*redis.Client // cluster: a master's client by address
}

// runRouted is Run with per-key routing.
func (r *Redis) runRouted(ctx context.Context, h Handler) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer r.setReady(false)
	if r.cfg.OnInbound != nil {
		fwdDone := make(chan struct{})
		go func() { defer close(fwdDone); r.forwardWhileLeased(sctx) }()
		// Run returns once the lease is given back: another node forwards
		// at once, not after the lease's expiry.
		defer func() { cancel(); <-fwdDone }()
	}
	s := &shards{r: r, h: h, byAddr: map[string]*shardSub{}, owner: map[string]*shardSub{},
		events: make(chan shardEvent, 16), rebuild: map[string]bool{}, nodes: map[string]*redis.Client{}}
	defer s.closeAll()
	// The broadcast channel first, as a rebuild: the hub resyncs once it
	// is confirmed, and the node is ready.
	s.rebuild[BroadcastChannel(r.cfg.Inbound)] = true
	s.retry = time.NewTimer(0)
	s.scheduled = true
	defer s.retry.Stop()
	probe := time.NewTicker(r.cfg.ProbeInterval)
	defer probe.Stop()
	sweep := time.NewTicker(unwatchLinger / 2)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.route.kick:
			s.apply(sctx, r.route.take(), nil)
		case ev := <-s.events:
			s.event(sctx, ev)
		case <-s.retry.C:
			s.resubscribe(sctx)
		case <-probe.C:
			s.probe(sctx)
		case <-sweep.C:
			r.route.sweep(time.Now(), unwatchLinger)
		}
	}
}

func (s *shards) closeAll() {
	for _, sh := range s.byAddr {
		_ = sh.ps.Close()
	}
}

// ownerOf is the address of the server whose connection must carry channel.
func (s *shards) ownerOf(ctx context.Context, channel string) (string, error) {
	if s.r.cluster == nil {
		return "", nil
	}
	c, err := s.r.cluster.MasterForKey(ctx, channel)
	if err != nil {
		return "", fmt.Errorf("finding the master of a channel's slot: %w", err)
	}
	addr := c.Options().Addr
	s.nodes[addr] = c
	return addr, nil
}

// shard returns the live connection to addr, making it if needed.
func (s *shards) shard(ctx context.Context, addr string) *shardSub {
	if sh := s.byAddr[addr]; sh != nil {
		return sh
	}
	var ps *redis.PubSub
	if s.r.cluster != nil {
		ps = s.nodes[addr].SSubscribe(ctx)
	} else {
		ps = s.r.client.(*redis.Client).SSubscribe(ctx)
	}
	sh := &shardSub{addr: addr, ps: ps}
	sh.probe = s.probeChannel(ctx, addr)
	s.byAddr[addr] = sh
	go s.receive(ctx, sh)
	s.send(ctx, sh, true, []string{sh.probe})
	return sh
}

// probeChannel finds a channel of this node's whose slot addr serves.
func (s *shards) probeChannel(ctx context.Context, addr string) string {
	base := "wspubsub:probe:" + s.r.instance + ":{"
	for i := 0; ; i++ {
		ch := base + strconv.Itoa(i) + "}"
		if a, err := s.ownerOf(ctx, ch); err != nil || a == addr || i > 1<<16 {
			return ch
		}
	}
}

// apply sends queued (un)subscriptions: grouped by connection and, in a
// cluster, by slot, at most subscribeBatch channels a command. With
// rebuilt (a resubscription), every connection a subscription goes to is
// put on hold before its command and recorded there, whenever it was made:
// one made here because the one before died meanwhile must be settled too.
func (s *shards) apply(ctx context.Context, ops []subOp, rebuilt map[*shardSub]bool) {
	type group struct {
		sh   *shardSub
		slot uint16
		sub  bool
	}
	var order []group
	chans := map[group][]string{}
	for _, op := range ops {
		var sh *shardSub
		if op.sub {
			addr, err := s.ownerOf(ctx, op.channel)
			if err != nil {
				if s.r.reached.Load() {
					s.r.cfg.Logger.Warn("redis: cannot subscribe to a key's channel now; retrying", "err", err)
				} else {
					s.r.cannotReach(err)
				}
				s.rebuild[op.channel] = true
				s.later()
				continue
			}
			sh = s.shard(ctx, addr)
			if rebuilt != nil && !rebuilt[sh] {
				rebuilt[sh] = true
				sh.hold.Store(true)
			}
		} else if sh = s.owner[op.channel]; sh == nil {
			delete(s.rebuild, op.channel)
			continue
		}
		g := group{sh: sh, sub: op.sub}
		if s.r.cluster != nil {
			g.slot = Slot(op.channel)
		}
		if chans[g] == nil {
			order = append(order, g)
		}
		chans[g] = append(chans[g], op.channel)
	}
	for _, g := range order {
		list := chans[g]
		for len(list) > 0 {
			n := min(len(list), subscribeBatch)
			s.send(ctx, g.sh, g.sub, list[:n])
			list = list[n:]
		}
	}
}

// send sends one command; a failure drops the connection (its channels are
// subscribed again on a new one).
func (s *shards) send(ctx context.Context, sh *shardSub, sub bool, chans []string) {
	if sh.dead {
		if sub { // lost meanwhile: these go with the next attempt
			for _, ch := range chans {
				if ch != sh.probe {
					s.rebuild[ch] = true
				}
			}
			s.later()
		}
		return
	}
	var err error
	if sub {
		for _, ch := range chans {
			s.owner[ch] = sh
		}
		err = sh.ps.SSubscribe(ctx, chans...)
	} else {
		for _, ch := range chans {
			delete(s.owner, ch)
		}
		err = sh.ps.SUnsubscribe(ctx, chans...)
	}
	if err != nil && ctx.Err() == nil {
		s.lose(sh, fmt.Errorf("sending a subscription command: %w", err))
	}
}

// lose drops sh: its channels are subscribed again after a backoff.
func (s *shards) lose(sh *shardSub, err error) {
	if sh.dead {
		return
	}
	sh.dead = true
	_ = sh.ps.Close()
	delete(s.byAddr, sh.addr)
	n := 0 // its channels: a walk over all is cheaper than a set per connection
	for ch, o := range s.owner {
		if o != sh {
			continue
		}
		n++
		delete(s.owner, ch)
		if ch != sh.probe {
			s.rebuild[ch] = true
		}
	}
	switch {
	case !s.r.reached.Load(): // never subscribed: nothing was lost
		s.r.cannotReach(err)
	case s.r.ready.Load() || s.attempt == 0:
		s.r.cfg.Logger.Warn("redis subscription lost; reconnecting", "server", sh.addr, "channels", n, "err", err)
	default:
		s.r.cfg.Logger.Debug("redis subscription lost again", "server", sh.addr, "channels", n, "err", err)
	}
	s.r.setReady(false)
	if sh.up.Load() {
		s.r.cfg.OnReconnect() // a working subscription lost, not a failed attempt
	}
	if s.r.cluster != nil {
		s.r.cluster.ReloadState(context.Background()) // a failover moves slots to a new master
	}
	s.later()
}

// later schedules resubscribe after the next backoff, unless it is.
func (s *shards) later() {
	if s.scheduled {
		return
	}
	s.scheduled = true
	s.retry.Reset(backoff(s.attempt, s.r.cfg.MinBackoff, s.r.cfg.MaxBackoff))
}

// resubscribe subscribes again to the channels of lost connections (those
// of keys still watched), holding the messages of each connection they go
// to until the hub has resynced.
func (s *shards) resubscribe(ctx context.Context) {
	s.scheduled = false
	if len(s.rebuild) == 0 {
		// The connection lost carried no channel of a watched key (its
		// probe only): nothing to hold, the node is ready again.
		s.settledAll(ctx)
		return
	}
	s.attempt++
	var ops []subOp
	bc := BroadcastChannel(s.r.cfg.Inbound)
	for ch := range s.rebuild {
		key, isKey := keyOfChannel(ch)
		if ch == bc || isKey && s.r.route.isWatched(key) {
			ops = append(ops, subOp{ch, true})
		}
		delete(s.rebuild, ch)
	}
	s.r.cfg.Logger.Debug("redis: subscribing again", "channels", len(ops), "attempt", s.attempt)
	touched := map[*shardSub]bool{}
	s.apply(ctx, ops, touched)
	for sh := range touched {
		if sh.dead {
			continue
		}
		// Confirmations come in command order: the ping's answer follows
		// them (and, on a connection a previous attempt still holds, that
		// attempt's too).
		n := sh.want.Add(1)
		if err := sh.ps.Ping(ctx, settlePing+":"+strconv.FormatUint(n, 10)); err != nil {
			s.lose(sh, fmt.Errorf("pinging a subscription: %w", err))
		}
	}
	if len(s.rebuild) > 0 {
		s.later()
	} else if len(touched) == 0 {
		s.settledAll(ctx) // every channel was an unwatched key's: nothing to hold
	}
}

// event handles what a receive goroutine reports.
func (s *shards) event(ctx context.Context, ev shardEvent) {
	if ev.err != nil {
		if s.byAddr[ev.sh.addr] == ev.sh {
			s.lose(ev.sh, ev.err)
		}
		return
	}
	if ev.dropped != "" && ev.dropped == ev.sh.probe {
		// Its probe channel's slot moved to another master: without a
		// probe it would pass for dead two intervals later. It is made
		// again now, with a probe channel its master serves.
		if s.byAddr[ev.sh.addr] == ev.sh {
			if s.r.cluster != nil {
				s.r.cluster.ReloadState(ctx)
			}
			s.lose(ev.sh, errors.New("its probe channel's slot moved to another master"))
		}
		return
	}
	if ev.dropped != "" {
		// Not asked for (an unsubscription asked for has left owner
		// already): subscribed again where the slot is now.
		if s.owner[ev.dropped] == ev.sh {
			delete(s.owner, ev.dropped)
			s.rebuild[ev.dropped] = true
			s.r.cfg.Logger.Info("redis: a channel's slot moved; subscribing again", "server", ev.sh.addr)
			if s.r.cluster != nil {
				s.r.cluster.ReloadState(ctx)
			}
			s.later()
		}
		return
	}
	if ev.settled == 0 {
		return
	}
	if ev.sh.dead || ev.settled != ev.sh.want.Load() {
		ev.release <- false // dropped, or a later attempt's ping is out: its answer settles
		return
	}
	// The hub holds its resuming sessions before the held messages go.
	s.r.dispatchMu.Lock()
	s.r.cfg.OnSubscribed()
	s.r.dispatchMu.Unlock()
	ev.sh.hold.Store(false)
	ev.release <- true
	s.settledAll(ctx)
}

// settledAll makes the node ready once nothing is left to subscribe again
// and no connection holds messages.
func (s *shards) settledAll(ctx context.Context) {
	if len(s.rebuild) == 0 && !s.holding() {
		switch {
		case s.attempt > 1 && !s.r.reached.Load():
			s.r.cfg.Logger.Info("redis reached; subscribed", "addr", s.r.addr, "attempts", s.attempt)
		case s.attempt > 1:
			s.r.cfg.Logger.Info("redis subscription restored", "attempts", s.attempt)
		}
		s.attempt = 0
		if err := s.r.loadHistory(ctx); err != nil {
			s.r.cfg.Logger.Warn("redis: history functions not loaded", "err", err)
		}
		s.r.setReady(true)
	}
}

func (s *shards) holding() bool {
	for _, sh := range s.byAddr {
		if sh.hold.Load() {
			return true
		}
	}
	return false
}

// probe sends every connection a probe, unless the last two sent have
// not come back: then the subscription is taken for dead (a probe has
// between one and two intervals to come back, so a connection busy with a
// burst is not dropped for being slow). Held connections too (a probe's
// answer is read before the hold applies): one that went half-open during
// its rebuild would otherwise hold its messages, and keep the node
// unready, until the kernel gave up on it.
func (s *shards) probe(ctx context.Context) {
	for _, sh := range s.byAddr {
		if sh.probesOut.Load() >= 2 {
			s.r.cfg.OnProbeLost()
			s.lose(sh, errors.New("subscription probes did not come back"))
			continue
		}
		sh.probesOut.Add(1)
		if err := s.r.client.SPublish(ctx, sh.probe, "p").Err(); err != nil && ctx.Err() == nil {
			s.r.cfg.Logger.Warn("redis: publishing a subscription probe failed", "err", err)
		}
	}
}
