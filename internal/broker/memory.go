package broker

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// Memory is an in-process broker: Publish on the inbound channel (or on its
// RecordedChannel) reaches Run's handler, any channel can be watched with
// Subscribe. Messages published while nobody listens are discarded, as
// with Redis.
type Memory struct {
	inbound  string
	recorded string // RecordedChannel(inbound)

	mu   sync.Mutex
	subs map[string][]chan []byte
	in   chan inMsg
	run  atomic.Bool
	hist *memHistory // nil: no history (see WithHistory)
}

// inMsg is one message for Run's handlers, in publication order.
type inMsg struct {
	p        []byte
	recorded bool // published on the recorded channel
}

// NewMemory returns a broker whose inbound channel is named inbound.
func NewMemory(inbound string) *Memory {
	return &Memory{inbound: inbound, recorded: RecordedChannel(inbound), subs: map[string][]chan []byte{}, in: make(chan inMsg, 4096)}
}

// Run implements Broker.
func (m *Memory) Run(ctx context.Context, h Handler) error { return m.RunSplit(ctx, h, h) }

// RunSplit implements Broker.
func (m *Memory) RunSplit(ctx context.Context, plain, recorded Handler) error {
	m.run.Store(true)
	defer m.run.Store(false)
	for {
		select {
		case <-ctx.Done():
			return nil
		case msg := <-m.in:
			if msg.recorded {
				recorded(msg.p)
			} else {
				plain(msg.p)
			}
		}
	}
}

// Publish implements Broker. Publishing on the inbound (or recorded)
// channel blocks while Run's backlog is full, rather than dropping.
func (m *Memory) Publish(ctx context.Context, channel string, payload []byte) error {
	p := append([]byte(nil), payload...)
	if channel == m.inbound || channel == m.recorded {
		if !m.run.Load() {
			return errors.New("in-process broker is not running")
		}
		select {
		case m.in <- inMsg{p, channel == m.recorded}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.subs[channel] {
		select {
		case c <- p:
		default: // a watcher that does not keep up misses messages, like a slow Redis client
		}
	}
	return nil
}

// Subscribe returns a channel receiving every message published on channel
// (buffered; a watcher that falls behind misses messages) and a cancel func.
func (m *Memory) Subscribe(channel string) (<-chan []byte, func()) {
	c := make(chan []byte, 1024)
	m.mu.Lock()
	m.subs[channel] = append(m.subs[channel], c)
	m.mu.Unlock()
	return c, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		list := m.subs[channel]
		for i, x := range list {
			if x == c {
				m.subs[channel] = append(list[:i:i], list[i+1:]...)
				break
			}
		}
	}
}

// Ready implements Broker.
func (m *Memory) Ready() bool { return m.run.Load() }

// Close implements Broker.
func (m *Memory) Close() error { return nil }
