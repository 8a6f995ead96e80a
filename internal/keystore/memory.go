package keystore

import (
	"context"
	"sync"
)

// Memory is an in-process key set, used for the embedded demo and in tests.
type Memory struct {
	mu   sync.RWMutex
	keys map[string]struct{}
	err  error
}

// NewMemory returns a store holding keys.
func NewMemory(keys ...string) *Memory {
	m := &Memory{keys: make(map[string]struct{}, len(keys))}
	for _, k := range keys {
		m.keys[k] = struct{}{}
	}
	return m
}

// Add makes key known.
func (m *Memory) Add(key string) {
	m.mu.Lock()
	m.keys[key] = struct{}{}
	m.mu.Unlock()
}

// Remove forgets key.
func (m *Memory) Remove(key string) {
	m.mu.Lock()
	delete(m.keys, key)
	m.mu.Unlock()
}

// SetError makes every call fail with err (nil restores); for tests.
func (m *Memory) SetError(err error) {
	m.mu.Lock()
	m.err = err
	m.mu.Unlock()
}

// Contains implements KeyStore.
func (m *Memory) Contains(_ context.Context, key string) (bool, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.err != nil {
		return false, m.err
	}
	_, ok := m.keys[key]
	return ok, nil
}

// Ping implements KeyStore.
func (m *Memory) Ping(context.Context) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.err
}

// Close implements KeyStore.
func (m *Memory) Close(context.Context) error { return nil }
