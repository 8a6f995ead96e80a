package presence

import (
	"context"
	"time"
)

// Memory is presence for a gateway without Redis: it answers from this
// node's own connections.
type Memory struct {
	cfg     Config
	c       *counts
	started time.Time
}

// NewMemory returns presence for this node alone.
func NewMemory(cfg Config) *Memory {
	cfg.defaults()
	return &Memory{cfg: cfg, c: newCounts(false, nil), started: cfg.Now()}
}

// Join implements Presence.
func (m *Memory) Join(key, transport string) { m.c.change(key, transport, 1) }

// Leave implements Presence.
func (m *Memory) Leave(key, transport string) { m.c.change(key, transport, -1) }

// Lookup implements Presence.
func (m *Memory) Lookup(_ context.Context, keys []string) (map[string][]Entry, error) {
	return m.c.lookup(m.cfg.NodeID, keys), nil
}

// Nodes implements Presence: this node.
func (m *Memory) Nodes(context.Context) ([]Node, error) {
	return []Node{{ID: m.cfg.NodeID, Addr: m.cfg.Addr(), Conns: m.conns(), Version: m.cfg.Version,
		Started: m.started, Heartbeat: m.cfg.Now()}}, nil
}

// Run implements Presence: there is nothing to do in the background.
func (m *Memory) Run(context.Context) {}

// Close implements Presence.
func (m *Memory) Close(context.Context) error { return nil }

func (m *Memory) conns() int { return connsOf(&m.cfg, m.c) }
