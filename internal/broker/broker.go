// Package broker connects the gateway to the pub/sub system backends publish
// on. It owns the Broker interface and its Redis and in-process
// implementations, which behave the same: inbound messages on one channel are
// handed to a Handler; events are published on named channels. It also
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
	// Run subscribes to the inbound channel and calls h for every message
	// until ctx is done. It returns nil when ctx ends.
	Run(ctx context.Context, h Handler) error
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
