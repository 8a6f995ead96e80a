// Package envelope parses the messages that backends publish for wspubsub:
//
//	{"recipients":["<key>",...],"data":<any JSON>}
//	{"broadcast":true,"data":<any JSON>}
//
// It owns the wire contract of inbound messages and the exact bytes a client
// receives: the published object minus its "recipients" (or "broadcast")
// member, with every other member's bytes passed through unchanged (numbers
// are not re-encoded, member order is kept). A recorded message also
// carries "wspubsub_ids" (its ids in the history), trusted only where the
// caller knows the history functions wrote it (ParseRecorded). It must not
// know about connections, brokers or transports.
//
// The scanner is hand-written rather than built on encoding/json because the
// gateway needs byte spans of members (to pass data through untouched) and no
// allocation per recipient; Valid checks first, so the scanner only
// ever walks well-formed JSON.
package envelope

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"

	gojson "github.com/goccy/go-json"
)

// Valid reports whether b is one well-formed JSON value, by encoding/json's
// rules (its nesting limit included; FuzzValidAgreesWithEncodingJSON holds
// the two to it). It is goccy/go-json's validator: on a typical 150-byte
// message 83 ns against encoding/json.Valid's 386 (BenchmarkValid), and
// every inbound message is validated once on the gateway's one reading
// goroutine.
func Valid(b []byte) bool { return gojson.Valid(b) }

// Drop reasons, used as metric labels and in log lines.
const (
	ReasonTooLarge      = "too_large"
	ReasonInvalidJSON   = "invalid_json"
	ReasonNotObject     = "not_object"
	ReasonBadRecipients = "bad_recipients"
	ReasonNoRecipients  = "no_recipients"
	ReasonNoData        = "no_data"
	ReasonBadBroadcast  = "bad_broadcast"
	// ReasonBadIDs: a recorded message's "wspubsub_ids" member that is not
	// one string per recipient (only the history functions write it).
	ReasonBadIDs = "bad_ids"
	// ReasonInvalidUTF8: JSON whose strings hold bytes that are not UTF-8.
	// encoding/json accepts it, but a WebSocket text frame must be UTF-8:
	// every conforming client would drop its connection on it.
	ReasonInvalidUTF8 = "invalid_utf8"
	// ReasonEscapedName: a top-level member name spelt with a backslash
	// escape ("recipi\u0065nts"). This parser matches names on their
	// bytes, the history functions (Lua's cjson) on their decoded text:
	// refused by both, so that they cannot disagree on the recipients.
	ReasonEscapedName = "escaped_member_name"
	// ReasonInternal: the gateway failed on the message (a bug, logged).
	ReasonInternal = "internal_error"
)

// Reasons lists every drop reason, so metrics can be pre-declared.
var Reasons = []string{ReasonTooLarge, ReasonInvalidJSON, ReasonNotObject,
	ReasonBadRecipients, ReasonNoRecipients, ReasonNoData, ReasonBadBroadcast, ReasonBadIDs, ReasonInvalidUTF8,
	ReasonEscapedName, ReasonInternal}

// ReasonUntrustedIDs: a "wspubsub_ids" member on a message anyone may have
// published (a plain PUBLISH): removed, the message delivered without ids.
// Not a drop reason: the message itself goes on.
const ReasonUntrustedIDs = "untrusted_ids"

// StripReasons lists why a member may be removed from a delivered message.
var StripReasons = []string{ReasonUntrustedIDs}

// Error says why a message was rejected.
type Error struct {
	Reason string // one of the Reason constants
	Detail string
}

func (e *Error) Error() string { return "envelope " + e.Reason + ": " + e.Detail }

// Envelope is one parsed message. Its slices point into the parsed input (and
// into the Parser's scratch space): they are valid until the next Parse.
type Envelope struct {
	// Recipients are the raw keys the message is for; empty when Broadcast.
	Recipients [][]byte
	// Broadcast is true for the {"broadcast":true,...} form: every connection.
	Broadcast bool
	// IDs are the history ids of a recorded message, one per recipient
	// (member "wspubsub_ids", written by the history functions); nil for a
	// message published without them, and always nil from Parse.
	IDs [][]byte
	// StrippedIDs reports that Parse found a "wspubsub_ids" member and
	// removed it: ids are trusted only from ParseRecorded.
	StrippedIDs bool
	// Payload is what a client receives: the object minus routing members.
	// It is freshly allocated and may be retained. Its array starts
	// FrameRoom bytes earlier (Framed), so a transport can put its header
	// in front of it without copying the payload.
	Payload []byte
	// Framed is Payload with FrameRoom spare bytes before it.
	Framed []byte
}

// FrameRoom is the spare room before every Payload: the longest header a
// server's WebSocket frame needs (2 bytes, 2 for a 16-bit length, 8 for a
// 64-bit one).
const FrameRoom = 10

// IDsMember is the routing member that carries a recorded message's ids.
const IDsMember = "wspubsub_ids"

// Parser parses envelopes, reusing its scratch space between calls. A Parser
// is not safe for concurrent use.
type Parser struct {
	// MaxBytes rejects larger messages; 0 means no limit.
	MaxBytes int
	recips   [][]byte
	ids      [][]byte
	spans    []span
}

type span struct{ start, end int }

// Parse validates msg, a message anyone may have published (a plain
// PUBLISH, a POST /publish body), and extracts its routing and payload. A
// "wspubsub_ids" member is removed like the routing members and otherwise
// ignored (not even checked): ids come only from the history, and a plain
// message is delivered without one (StrippedIDs tells it was there).
func (p *Parser) Parse(msg []byte) (Envelope, error) { return p.parse(msg, false) }

// ParseRecorded is Parse for a message the history functions published
// (on a channel only they and the gateways write): its "wspubsub_ids"
// member, one id per recipient, gives IDs.
func (p *Parser) ParseRecorded(msg []byte) (Envelope, error) { return p.parse(msg, true) }

func (p *Parser) parse(msg []byte, recorded bool) (Envelope, error) {
	if p.MaxBytes > 0 && len(msg) > p.MaxBytes {
		return Envelope{}, &Error{ReasonTooLarge, fmt.Sprintf("%d bytes, limit %d", len(msg), p.MaxBytes)}
	}
	if !Valid(msg) {
		return Envelope{}, &Error{ReasonInvalidJSON, "not valid JSON"}
	}
	if !utf8.Valid(msg) {
		return Envelope{}, &Error{ReasonInvalidUTF8, "JSON holds bytes that are not UTF-8"}
	}
	i := skipSpace(msg, 0)
	if msg[i] != '{' {
		return Envelope{}, &Error{ReasonNotObject, "top level is not an object"}
	}
	p.spans = p.spans[:0]
	var recips, broadcast, ids, data = -1, -1, -1, false
	var recipVal, bcastVal, idsVal span
	i = skipSpace(msg, i+1)
	for msg[i] != '}' {
		memberStart := i
		keyEnd := skipString(msg, i)
		key := msg[i+1 : keyEnd-1]
		if hasEscape(key) {
			return Envelope{}, &Error{ReasonEscapedName, "a top-level member name holds a backslash escape"}
		}
		i = skipSpace(msg, keyEnd)
		i = skipSpace(msg, i+1) // ':'
		valStart := i
		i = skipValue(msg, i)
		val := span{valStart, i}
		switch string(key) {
		case "recipients":
			recips, recipVal = memberStart, val
		case "broadcast":
			broadcast, bcastVal = memberStart, val
		case IDsMember:
			// The first one counts: the history functions put theirs
			// first, ahead of any a publisher sent along.
			if ids < 0 {
				ids, idsVal = memberStart, val
			}
		default:
			if string(key) == "data" {
				data = true
			}
			p.spans = append(p.spans, span{memberStart, i})
		}
		i = skipSpace(msg, i)
		if msg[i] == ',' {
			i = skipSpace(msg, i+1)
		}
	}
	if !data {
		return Envelope{}, &Error{ReasonNoData, `no "data" member`}
	}
	env := Envelope{StrippedIDs: ids >= 0 && !recorded}
	if !recorded {
		ids = -1
	}
	switch {
	case broadcast >= 0:
		if recips >= 0 {
			return Envelope{}, &Error{ReasonBadBroadcast, `both "broadcast" and "recipients"`}
		}
		if string(msg[bcastVal.start:bcastVal.end]) != "true" {
			return Envelope{}, &Error{ReasonBadBroadcast, `"broadcast" must be true`}
		}
		env.Broadcast = true
	case recips < 0:
		return Envelope{}, &Error{ReasonBadRecipients, `no "recipients" member`}
	default:
		r, err := p.parseRecipients(msg[recipVal.start:recipVal.end])
		if err != nil {
			return Envelope{}, err
		}
		if len(r) == 0 {
			return Envelope{}, &Error{ReasonNoRecipients, `"recipients" is empty`}
		}
		env.Recipients = r
		if ids >= 0 {
			list, err := p.parseStrings(msg[idsVal.start:idsVal.end], &p.ids, ReasonBadIDs, `"`+IDsMember+`"`)
			if err != nil {
				return Envelope{}, err
			}
			if len(list) != len(r) {
				return Envelope{}, &Error{ReasonBadIDs, `"` + IDsMember + `" must hold one id per recipient`}
			}
			env.IDs = list
		}
	}
	env.Framed = p.payload(msg)
	env.Payload = env.Framed[FrameRoom:]
	return env, nil
}

// payload joins the kept members into a new object, FrameRoom bytes into a
// new array.
func (p *Parser) payload(msg []byte) []byte {
	n := 2
	for _, s := range p.spans {
		n += s.end - s.start + 1
	}
	out := make([]byte, FrameRoom, FrameRoom+n)
	out = append(out, '{')
	for k, s := range p.spans {
		if k > 0 {
			out = append(out, ',')
		}
		out = append(out, msg[s.start:s.end]...)
	}
	return append(out, '}')
}

// parseRecipients reads a JSON array of strings. Strings without escapes are
// returned as slices of v; escaped ones are decoded (rare, allocates).
func (p *Parser) parseRecipients(v []byte) ([][]byte, error) {
	return p.parseStrings(v, &p.recips, ReasonBadRecipients, `"recipients"`)
}

// parseStrings reads a JSON array of strings into *dst (reused).
func (p *Parser) parseStrings(v []byte, dst *[][]byte, reason, what string) ([][]byte, error) {
	if v[0] != '[' {
		return nil, &Error{reason, what + " is not a list"}
	}
	list := (*dst)[:0]
	i := skipSpace(v, 1)
	for v[i] != ']' {
		if v[i] != '"' {
			return nil, &Error{reason, what + " holds a non-string"}
		}
		end := skipString(v, i)
		raw := v[i+1 : end-1]
		if hasEscape(raw) {
			if hasSurrogate(raw) {
				// Go decodes a lone one to U+FFFD, cjson refuses it: the
				// gateway and the history would name different keys.
				return nil, &Error{reason, "a lone UTF-16 surrogate escape in " + what}
			}
			var s string
			if err := json.Unmarshal(v[i:end], &s); err != nil {
				return nil, &Error{reason, "undecodable string in " + what}
			}
			raw = []byte(s)
		}
		list = append(list, raw)
		i = skipSpace(v, end)
		if v[i] == ',' {
			i = skipSpace(v, i+1)
		}
	}
	*dst = list
	return list, nil
}

func hasEscape(b []byte) bool {
	for _, c := range b {
		if c == '\\' {
			return true
		}
	}
	return false
}

// hasSurrogate reports whether the JSON string contents b hold a \uD800 to
// \uDFFF escape that is not half of a pair (a high one followed by a low
// one: the same character for Go and cjson).
func hasSurrogate(b []byte) bool {
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		i++ // the escaped character: a backslash after one is no escape
		switch surrogate(b, i) {
		case 'h':
			if i+6 >= len(b) || b[i+5] != '\\' || surrogate(b, i+6) != 'l' {
				return true
			}
			i += 6 // past the low half's backslash
		case 'l':
			return true
		}
	}
	return false
}

// surrogate classifies the escape whose 'u' is at b[i]: 'h' for a high
// surrogate, 'l' for a low one, 0 for anything else.
func surrogate(b []byte, i int) byte {
	if i+4 >= len(b) || b[i] != 'u' || b[i+1]|0x20 != 'd' {
		return 0
	}
	switch b[i+2] | 0x20 {
	case '8', '9', 'a', 'b':
		return 'h'
	case 'c', 'd', 'e', 'f':
		return 'l'
	}
	return 0
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// skipValue returns the index just past the (valid) value starting at b[i].
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return i
	default: // number, true, false, null
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// ForKey returns the one-recipient envelope that per-key routing publishes
// on key's channel: {"recipients":[key], …payload's members}. payload is an
// Envelope's Payload (an object holding at least "data").
func ForKey(payload, key []byte) []byte {
	k, _ := json.Marshal(string(key)) // a string always encodes
	out := make([]byte, 0, len(`{"recipients":[],`)+len(k)+len(payload))
	out = append(out, `{"recipients":[`...)
	out = append(out, k...)
	out = append(out, ']')
	if len(payload) > 2 {
		out = append(out, ',')
	}
	return append(out, payload[1:]...)
}
