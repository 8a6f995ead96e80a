package session

import (
	"sync"

	"github.com/wspubsub/wspubsub/internal/envelope"
)

// Encoding slots: each transport caches its wire form of a message in its
// own slot, so a message is encoded once per transport however many
// connections receive it.
const (
	EncWebSocket = iota
	EncEventStream
	encSlots // number of slots; a new transport adds its constant above
)

// Message is one payload on its way to one or more sessions. It is shared by
// every recipient and must not be modified after it is first delivered.
type Message struct {
	// ID is the message's history id, "" for none (see NewRecorded).
	ID      string
	id      envelope.ID
	Payload []byte
	room    []byte // spare bytes just before Payload in its array (NewFramed; its capacity runs over Payload), nil if none
	size    int    // what it counts against a queue's byte limit
	enc     [encSlots]struct {
		once sync.Once
		b    []byte
	}
}

// NewMessage wraps payload (which the caller must no longer modify).
func NewMessage(payload []byte) *Message { return &Message{Payload: payload, size: len(payload)} }

// NewFramed wraps framed[room:] as the payload; the room bytes before it
// are the message's to write a transport header into (see EncodedInRoom).
func NewFramed(framed []byte, room int) *Message {
	return &Message{Payload: framed[room:], room: framed[:room], size: len(framed) - room}
}

// NewControl returns a transport control message whose wire form in slot is
// already known (a ping, a heartbeat reply). It counts against the queue's
// byte limit like any message, so a client cannot grow its queue with
// requests for replies it never reads.
func NewControl(slot int, wire []byte) *Message {
	m := &Message{size: len(wire)}
	m.enc[slot].once.Do(func() { m.enc[slot].b = wire })
	return m
}

// Encoded returns the message's wire form for slot, computing it with encode
// on first use.
func (m *Message) Encoded(slot int, encode func(payload []byte) []byte) []byte {
	e := &m.enc[slot]
	e.once.Do(func() { e.b = encode(m.Payload) })
	return e.b
}

// EncodedInRoom is Encoded for a transport that can write its header into
// the room before the payload: encode gets the room (nil when the message
// has none) and the payload, and returns the wire form; for a message with
// room it can be room[k:] extended over the payload, with no copy. Only
// one transport's slot may use the room.
func (m *Message) EncodedInRoom(slot int, encode func(room, payload []byte) []byte) []byte {
	e := &m.enc[slot]
	e.once.Do(func() { e.b = encode(m.room, m.Payload) })
	return e.b
}

// HistoryID returns the parsed form of ID; ok is false when the message
// has none.
func (m *Message) HistoryID() (id envelope.ID, ok bool) { return m.id, m.ID != "" }
