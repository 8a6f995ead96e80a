package broker

// One routed subscription connection as its own goroutine sees it: the
// receive loop that reads it, holds a rebuild's messages until the
// manager (shards.go) answers its settle ping's report, and hands
// messages to the Handler. Beyond the connection's own flags it changes
// nothing the manager owns (the route's confirmations are locked): it
// reports events instead.

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
)

// shardSub is one subscription connection.
type shardSub struct {
	addr  string
	ps    *redis.PubSub
	probe string // its probe channel
	// probesOut: probes published since one last came back.
	probesOut atomic.Int32
	// hold: a rebuild's subscriptions are being confirmed on it; messages
	// wait until the manager answers the settle report of its latest
	// settle ping (the hub has been told to resync).
	hold atomic.Bool
	// want is the number of the latest settle ping sent on it: only that
	// ping's answer ends the hold (an earlier attempt's answer may come
	// before the later attempt's subscriptions are confirmed).
	want atomic.Uint64
	up   atomic.Bool // a subscription was confirmed on it: its loss counts as one
	dead bool        // dropped (the manager's)
}

// shardEvent reports, from a connection's receive goroutine, that it ended
// (err), that a rebuild's subscriptions on it are all confirmed, or that
// Redis unsubscribed it from a channel (dropped: its slot moved to
// another master).
type shardEvent struct {
	sh      *shardSub
	err     error
	settled uint64 // the settle ping answered (0: not a settle report)
	// release gets the manager's answer to a settle report: true, the
	// held messages go; false, they stay held (a later settle ping is out)
	// or are dropped with the connection.
	release chan bool
	dropped string
}

const (
	settlePing   = "wspubsub-settle"
	receiveQuiet = 15 * time.Second // a connection quiet this long is pinged
)

// receive reads one connection until it fails.
func (s *shards) receive(ctx context.Context, sh *shardSub) {
	var held [][]byte
	report := func(ev shardEvent) bool {
		select {
		case s.events <- ev:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		msg, err := sh.ps.ReceiveTimeout(ctx, receiveQuiet)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if perr := sh.ps.Ping(ctx); perr == nil {
					continue
				}
			}
			if !errors.Is(err, redis.ErrClosed) {
				report(shardEvent{sh: sh, err: err})
			}
			return
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			switch m.Kind {
			case "ssubscribe":
				sh.up.Store(true)
				s.r.route.confirmed(m.Channel)
			case "sunsubscribe":
				if !report(shardEvent{sh: sh, dropped: m.Channel}) {
					return
				}
			}
		case *redis.Pong:
			n, ok := settleNumber(m.Payload)
			if !ok || !sh.hold.Load() || n != sh.want.Load() {
				break // not a settle ping, or an earlier attempt's: a later one's answer follows
			}
			release := make(chan bool, 1)
			if !report(shardEvent{sh: sh, settled: n, release: release}) {
				return
			}
			select {
			case ok := <-release:
				if ok {
					for _, p := range held {
						s.dispatch(p)
					}
					held = nil
				}
			case <-ctx.Done():
				return
			}
		case *redis.Message:
			switch {
			case s.r.mute != nil && s.r.mute():
				// (tests: a subscription that silently stops delivering)
			case m.Channel == sh.probe:
				sh.probesOut.Store(0)
			case sh.hold.Load():
				held = append(held, []byte(m.Payload))
			default:
				s.dispatch(unsafe.Slice(unsafe.StringData(m.Payload), len(m.Payload)))
			}
		}
	}
}

// settleNumber reads the number of a settle ping's answer.
func settleNumber(payload string) (uint64, bool) {
	v, ok := strings.CutPrefix(payload, settlePing+":")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 64)
	return n, err == nil && n > 0
}

// dispatch hands one message to the handler: one at a time, whichever
// connection it came on (the Handler contract).
func (s *shards) dispatch(p []byte) {
	s.r.dispatchMu.Lock()
	defer s.r.dispatchMu.Unlock()
	s.h(p)
}
