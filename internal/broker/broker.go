// Package broker connects the gateway to the pub/sub system backends publish
// on. It owns the Broker interface and its Redis and in-process
// implementations, which behave the same: inbound messages are handed to a
// Handler, plain ones (anyone's PUBLISH) apart from recorded ones (the
// history functions' channel); events are published on named channels. It also
// sends the go-redis library's own log lines through slog (logs.go).
//
// A broker must not parse messages or know about connections: it moves
// bytes. Run must survive backend outages by itself (reconnect, resubscribe)
// without the caller noticing anything but Ready turning false.
package broker

import "context"

// Handler receives each inbound message. It is called from one goroutine,
// in order; payload is only valid during the call.
type Handler func(payload []byte)

// Broker is the gateway's seam to Redis (or its in-process stand-in).
type Broker interface {
	// Run is RunSplit with one handler for both kinds of message (for
	// what only watches the traffic).
	Run(ctx context.Context, h Handler) error
	// RunSplit subscribes to the inbound channels and, until ctx is done,
	// calls plain for every message on the inbound channel (anyone's
	// PUBLISH: a "wspubsub_ids" member on it must not be trusted) and
	// recorded for every message on the channels only the gateways and
	// the history functions write (RecordedChannel; with per-key routing,
	// the keys' and the broadcast channel), whose ids are the history's.
	// Both are called from one goroutine, in order. It returns nil when
	// ctx ends.
	RunSplit(ctx context.Context, plain, recorded Handler) error
	// Publish sends payload on channel.
	Publish(ctx context.Context, channel string, payload []byte) error
	// Ready reports whether the inbound subscription is live.
	Ready() bool
	// Close releases connections; Run returns soon after.
	Close() error
}

// Outgoing is one message to publish.
type Outgoing struct {
	Channel string
	Payload []byte
}

// Batcher is implemented by brokers that can publish several messages in one
// round trip; callers fall back to Publish otherwise.
type Batcher interface {
	PublishBatch(ctx context.Context, msgs []Outgoing) error
}
