package broker

import (
	"context"
	"strconv"
	"strings"
	"time"
)

// History is implemented by brokers that keep a bounded history per key,
// so that a client can resume after a disconnect (see README "Delivery
// guarantees"). Ids are opaque to clients: "<epoch>.<ms>-<seq>", where the
// epoch names one life of a key's history (a history recreated after it
// expired, or after Redis lost it, has a new one).
type History interface {
	// Record appends msg, a validated envelope, to the history of each of
	// its recipients and publishes it on the inbound channel with their
	// ids (member "wspubsub_ids"), atomically. A repeat of a non-empty idem
	// within the history's TTL is acknowledged (Duplicate, with the first
	// publish's ids) but neither recorded nor published again. A broadcast
	// is published without ids: it belongs to no key's history.
	Record(ctx context.Context, msg []byte, idem string) (Recorded, error)
	// Since returns what key's history holds after since: "" asks for the
	// position only (Top), "0" for everything held. Gap is set when the
	// history no longer reaches back to since; Entries then holds
	// everything held.
	Since(ctx context.Context, key, since string) (Replay, error)
}

// HistoryConfig bounds every key's history.
type HistoryConfig struct {
	Size int           // messages kept per key (>0)
	TTL  time.Duration // how long a message is kept
}

// Recorded is the outcome of Record.
type Recorded struct {
	IDs       []string // one per recipient, in order; nil for a broadcast
	Duplicate bool     // the idempotency key was seen: nothing was published
}

// Replay is what Since found.
type Replay struct {
	Gap     bool
	Top     string // the newest id held, "0" when none
	Entries []Entry
}

// Entry is one held message: its id and the payload clients receive.
type Entry struct {
	ID      string
	Payload []byte
}

// ID is a parsed message id. The zero ID is "0": before everything.
type ID struct {
	Epoch   string
	Ms, Seq uint64
}

// ParseID parses "<epoch>.<ms>-<seq>" or "0".
func ParseID(s string) (ID, bool) {
	if s == "0" {
		return ID{}, true
	}
	epoch, rest, ok := strings.Cut(s, ".")
	if !ok || epoch == "" || len(s) > MaxIDBytes || strings.Trim(epoch, "0123456789abcdefghijklmnopqrstuvwxyz") != "" {
		return ID{}, false
	}
	ms, seq, ok := strings.Cut(rest, "-")
	if !ok {
		return ID{}, false
	}
	m, err1 := strconv.ParseUint(ms, 10, 64)
	q, err2 := strconv.ParseUint(seq, 10, 64)
	if err1 != nil || err2 != nil {
		return ID{}, false
	}
	return ID{epoch, m, q}, true
}

// MaxIDBytes bounds an id a client may send.
const MaxIDBytes = 64

// After reports whether id comes after prev in one key's history. An id of
// another epoch than prev's is after it (a new life of the history), and
// every id is after the zero ID.
func (id ID) After(prev ID) bool {
	if prev.Epoch == "" || id.Epoch != prev.Epoch {
		return id.Epoch != "" || prev.Epoch != ""
	}
	if id.Ms != prev.Ms {
		return id.Ms > prev.Ms
	}
	return id.Seq > prev.Seq
}

func (id ID) String() string {
	if id.Epoch == "" {
		return "0"
	}
	return id.Epoch + "." + strconv.FormatUint(id.Ms, 10) + "-" + strconv.FormatUint(id.Seq, 10)
}
