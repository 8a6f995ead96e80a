package broker

import (
	"context"
	"time"
)

// History is implemented by brokers that keep a bounded history per key,
// so that a client can resume after a disconnect (see README "Delivery
// guarantees"). Ids are opaque to clients: "<epoch>.<ms>-<seq>", where the
// epoch names one life of a key's history (a history recreated after it
// expired, or after Redis lost it, has a new one).
type History interface {
	// Record appends msg, a validated envelope, to the history of each of
	// its recipients and publishes it with their ids (member
	// "wspubsub_ids") on RecordedChannel (routed: on each key's channel),
	// atomically. A repeat of a non-empty idem
	// within the history's TTL is acknowledged (Duplicate, with the first
	// publish's ids) but neither recorded nor published again. A broadcast
	// is published without ids: it belongs to no key's history.
	Record(ctx context.Context, msg []byte, idem string) (Recorded, error)
	// Since returns what key's history holds after since: "" asks for the
	// position only (Top: a real id even before the key's first message),
	// "0" for everything held. Gap is set when the history no longer
	// reaches back to since; Entries then holds everything held. An id
	// equal to the key's last one is no gap, even once the messages have
	// expired (the meta record remembers it for MetaTTL).
	Since(ctx context.Context, key, since string) (Replay, error)
}

// HistoryConfig bounds every key's history.
type HistoryConfig struct {
	Size int           // messages kept per key (>0)
	TTL  time.Duration // how long a message is kept
	// MetaTTL is how long a key's meta record (its epoch and last id) is
	// kept after its last publish or resume [24h, at least 2 TTL]: within
	// it, an id is judged exactly even once the messages have expired.
	MetaTTL time.Duration
}

// DefaultMetaTTL is HistoryConfig.MetaTTL's default.
const DefaultMetaTTL = 24 * time.Hour

// metaTTL is the meta record's lifetime: it must outlive the stream (at
// most TTL + TTL/8 after its last message), or a key's id would be
// judged without it.
func (c HistoryConfig) metaTTL() time.Duration {
	d := c.MetaTTL
	if d <= 0 {
		d = DefaultMetaTTL
	}
	return max(d, 2*c.TTL)
}

// Recorded is the outcome of Record.
type Recorded struct {
	IDs       []string // one per recipient, in order; nil for a broadcast
	Duplicate bool     // the idempotency key was seen: nothing was published
}

// Replay is what Since found.
type Replay struct {
	Gap     bool
	Top     string // the key's last id ("<epoch>.0-0" before any message; "0" when nothing is known of it)
	Entries []Entry
}

// Entry is one held message: its id and the payload clients receive.
type Entry struct {
	ID      string
	Payload []byte
}
