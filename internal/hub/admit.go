package hub

import (
	"context"
	"errors"
	"time"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// ErrRejected is returned by Admit with the close code to send.
type ErrRejected struct {
	Code   int
	Reason string
}

func (e *ErrRejected) Error() string { return "rejected: " + e.Reason }

// Admit checks s's key and, when it is known, registers s and publishes its
// connected event. Otherwise it returns *ErrRejected carrying the close code
// for the client: CloseUnauthorized for an unknown key, CloseTryAgain when
// the store cannot answer, CloseGoingAway during shutdown.
func (h *Hub) Admit(ctx context.Context, s *session.Session) error {
	key := keystore.Redact(s.Key)
	if s.Key == "" {
		h.reject(metrics.RejectUnauthorized)
		h.log.Info("connection rejected: no key", "conn", s.ID, "transport", s.Transport)
		return &ErrRejected{session.CloseUnauthorized, "unauthorized"}
	}
	cctx, cancel := context.WithTimeout(ctx, h.cfg.KeyCheckTimeout)
	ok, err := h.cfg.Store.Contains(cctx, s.Key)
	cancel()
	switch {
	case err != nil && h.closing.Load():
		return &ErrRejected{session.CloseGoingAway, "going away"}
	case err != nil:
		h.reject(metrics.RejectStoreUnavailable)
		h.log.Warn("connection rejected: key store unavailable", "key", key, "conn", s.ID, "err", err)
		return &ErrRejected{session.CloseTryAgain, "try again later"}
	case !ok:
		h.reject(metrics.RejectUnauthorized)
		h.log.Info("connection rejected: unknown key", "key", key, "conn", s.ID, "transport", s.Transport)
		return &ErrRejected{session.CloseUnauthorized, "unauthorized"}
	}
	sh := h.shardOf([]byte(s.Key))
	sh.mu.Lock()
	if h.closing.Load() {
		sh.mu.Unlock()
		return &ErrRejected{session.CloseGoingAway, "going away"}
	}
	sh.keys[s.Key] = append(sh.keys[s.Key], s)
	sh.mu.Unlock()
	h.live.Add(1)
	h.m.Connects.WithLabelValues(s.Transport).Inc()
	h.m.Connections.WithLabelValues(s.Transport).Inc()
	h.events.emit(event{connected: true, key: s.Key, conn: s.ID, transport: s.Transport, at: time.Now()})
	h.log.Debug("connected", "key", key, "conn", s.ID, "transport", s.Transport)
	return nil
}

func (h *Hub) reject(reason string) { h.m.Rejections.WithLabelValues(reason).Inc() }

// Leave unregisters s (if Admit registered it) and publishes its
// disconnected event; reason labels the disconnect metric. Safe to call for
// sessions that were never admitted, and more than once.
func (h *Hub) Leave(s *session.Session, reason string) {
	sh := h.shardOf([]byte(s.Key))
	sh.mu.Lock()
	list := sh.keys[s.Key]
	found := false
	for i, x := range list {
		if x == s {
			list[i] = list[len(list)-1]
			list[len(list)-1] = nil
			list = list[:len(list)-1]
			found = true
			break
		}
	}
	if len(list) == 0 {
		delete(sh.keys, s.Key)
	} else if found {
		sh.keys[s.Key] = list
	}
	sh.mu.Unlock()
	if !found {
		return
	}
	h.live.Add(-1)
	h.m.Connections.WithLabelValues(s.Transport).Dec()
	h.m.Disconnects.WithLabelValues(reason).Inc()
	h.events.emit(event{connected: false, key: s.Key, conn: s.ID, transport: s.Transport, at: time.Now()})
	h.log.Debug("disconnected", "key", keystore.Redact(s.Key), "conn", s.ID, "reason", reason)
}

// recheck re-validates every connected key; keys the store no longer knows
// have their sessions closed with CloseRevoked. When the store cannot answer,
// the round stops and nothing is closed.
func (h *Hub) recheck(ctx context.Context) {
	var keys []string
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.RLock()
		for k := range sh.keys {
			keys = append(keys, k)
		}
		sh.mu.RUnlock()
	}
	for _, k := range keys {
		cctx, cancel := context.WithTimeout(ctx, h.cfg.KeyCheckTimeout)
		ok, err := h.cfg.Store.Contains(cctx, k)
		cancel()
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				h.log.Warn("key re-check skipped: key store unavailable", "err", err, "keys", len(keys))
			}
			return
		}
		if ok {
			continue
		}
		for _, s := range h.Sessions(k) {
			h.m.Revocations.Inc()
			s.Close(session.CloseRevoked, "revoked")
		}
		h.log.Info("key revoked; connections closed", "key", keystore.Redact(k))
	}
}

// Shutdown refuses new sessions, closes every live one with CloseGoingAway,
// waits (bounded by ctx) for transports to Leave, then flushes events.
func (h *Hub) Shutdown(ctx context.Context) {
	for i := range h.shards {
		h.shards[i].mu.Lock()
	}
	h.closing.Store(true)
	for i := range h.shards {
		h.shards[i].mu.Unlock()
	}
	h.each(func(s *session.Session) { s.Close(session.CloseGoingAway, "going away") })
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for h.live.Load() > 0 {
		select {
		case <-ctx.Done():
			h.log.Warn("shutdown: connections still open at deadline", "live", h.live.Load())
			h.events.flush(ctx)
			return
		case <-t.C:
		}
	}
	h.events.flush(ctx)
}
