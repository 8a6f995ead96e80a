package bench

// Publishing as a routed backend does (--routing keys): each key's message
// on the key's sharded channel, broadcasts on the broadcast channel, and
// durable messages through the history function with the history keys of
// one hash slot per call (what a Redis Cluster requires). The names and the
// slot function are the broker's (README "Several gateways: per-key
// routing").

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/wspubsub/wspubsub/internal/broker"
)

// routedCmd is one command of a routed publish: SPUBLISH channel payload,
// or (fcall) FCALL wspubsub_publish len(keys) keys… payload [idempotency key].
type routedCmd struct {
	fcall   bool
	channel string
	keys    []string
	payload []byte
}

// routePlan turns the bench's messages into routed commands.
type routePlan struct {
	broadcast string // the broadcast channel, wspubsub:b:{<--channel>}
	durable   bool
	cluster   bool // durable: one FCALL per hash slot, naming its history keys
}

// plan appends the commands that publish m to dst.
func (p routePlan) plan(dst []routedCmd, m []byte) ([]routedCmd, error) {
	keys, rest, broadcast, err := parseHead(m)
	if err != nil {
		return dst, err
	}
	if broadcast {
		// A broadcast has no key, hence no history: even durable, it goes
		// live on the broadcast channel (what the gateway itself does).
		return append(dst, routedCmd{channel: p.broadcast, payload: m}), nil
	}
	if p.durable && !p.cluster {
		// One Redis: the function publishes on each key's channel itself.
		return append(dst, routedCmd{fcall: true, payload: m}), nil
	}
	if p.durable {
		for _, group := range bySlot(keys) {
			hk := make([]string, len(group))
			for i, k := range group {
				hk[i] = broker.StreamKey(k)
			}
			dst = append(dst, routedCmd{fcall: true, keys: hk, payload: m})
		}
		return dst, nil
	}
	if len(keys) == 1 {
		return append(dst, routedCmd{channel: broker.KeyChannel(keys[0]), payload: m}), nil // already a one-recipient envelope
	}
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if seen[k] {
			continue
		}
		seen[k] = true
		dst = append(dst, routedCmd{channel: broker.KeyChannel(k), payload: forKey(k, rest)})
	}
	return dst, nil
}

// forKey is the one-recipient envelope {"recipients":["<key>"] + rest,
// rest being what followed the recipients list (`,"data":…}`).
func forKey(key string, rest []byte) []byte {
	out := make([]byte, 0, len(`{"recipients":[""]`)+len(key)+len(rest))
	out = append(out, `{"recipients":["`...)
	out = append(out, key...)
	out = append(out, `"]`...)
	return append(out, rest...)
}

const (
	headRecipients = `{"recipients":[`
	headBroadcast  = `{"broadcast":true`
)

func hasPrefix(m []byte, p string) bool { return len(m) >= len(p) && string(m[:len(p)]) == p }

// parseHead reads the routing head of a message the bench built
// (benchMessage): {"recipients":["k1","k2",…] or {"broadcast":true. It is
// not a JSON parser: the bench's keys (prefix and number) hold no quote or
// backslash, and a key that does is refused.
func parseHead(m []byte) (keys []string, rest []byte, broadcast bool, err error) {
	if hasPrefix(m, headBroadcast) {
		return nil, m[len(headBroadcast):], true, nil
	}
	if !hasPrefix(m, headRecipients) {
		return nil, nil, false, errors.New("routed publish: the message starts with neither recipients nor broadcast")
	}
	i := len(headRecipients)
	for {
		if i >= len(m) || m[i] != '"' {
			return nil, nil, false, fmt.Errorf("routed publish: bad recipients list at byte %d", i)
		}
		end := bytes.IndexByte(m[i+1:], '"')
		if end < 0 {
			return nil, nil, false, errors.New("routed publish: unterminated key")
		}
		k := m[i+1 : i+1+end]
		if bytes.IndexByte(k, '\\') >= 0 || len(k) == 0 {
			return nil, nil, false, fmt.Errorf("routed publish: key %q is not plain", k)
		}
		keys = append(keys, string(k))
		i += end + 2
		if i < len(m) && m[i] == ',' {
			i++
			continue
		}
		if i < len(m) && m[i] == ']' {
			return keys, m[i+1:], false, nil
		}
		return nil, nil, false, fmt.Errorf("routed publish: bad recipients list at byte %d", i)
	}
}

// bySlot groups keys by the hash slot of their history key, in the order
// each slot first appears (a function call may touch one slot only).
func bySlot(keys []string) [][]string {
	if len(keys) == 1 {
		return [][]string{keys}
	}
	idx := map[uint16]int{}
	var out [][]string
	for _, k := range keys {
		s := broker.Slot(broker.StreamKey(k))
		i, ok := idx[s]
		if !ok {
			i = len(out)
			idx[s] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], k)
	}
	return out
}
