package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
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

// Verdict maps an Admit error to the close code and reason the client gets:
// a rejection's own, or CloseTryAgain for anything else.
func Verdict(err error) (code int, reason string) {
	var rej *ErrRejected
	if errors.As(err, &rej) {
		return rej.Code, rej.Reason
	}
	return session.CloseTryAgain, "try again later"
}

// Admit is the one admission of every transport: it applies the
// per-address throttle on failed key checks and the per-key and
// per-address session caps, checks s's key and, when it is known, registers
// s and publishes its connected event. Otherwise it returns *ErrRejected
// carrying the close code for the client: CloseUnauthorized for an unknown
// key, CloseTooMany over a cap or the throttle (the store is not asked),
// CloseTryAgain when the store cannot answer, CloseGoingAway during
// shutdown, CloseServiceRestart during a drain (drain.go).
func (h *Hub) Admit(ctx context.Context, s *session.Session) error {
	if err := h.drainRefusal(s); err != nil {
		return err
	}
	key := keystore.Redact(s.Key)
	now := time.Now()
	if !h.authFails.Has(s.Addr, now) {
		return h.throttled(s)
	}
	if err := h.overCap(s); err != nil {
		return err
	}
	if s.Key == "" {
		h.authFails.Take(s.Addr, now)
		h.reject(metrics.RejectUnauthorized)
		h.sampled.Log(slog.LevelInfo, "connection rejected: no key", "conn", s.ID, "transport", s.Transport, "addr", s.Addr)
		return &ErrRejected{session.CloseUnauthorized, "unauthorized"}
	}
	cctx, cancel := context.WithTimeout(ctx, h.cfg.KeyCheckTimeout)
	defer cancel()
	id, throttled, err := h.check(cctx, s)
	if throttled {
		return h.throttled(s)
	}
	switch {
	case errors.Is(err, keystore.ErrUnauthorized):
		h.reject(metrics.RejectUnauthorized)
		h.sampled.Log(slog.LevelInfo, "connection rejected: "+refusal(err), "key", key, "conn", s.ID, "transport", s.Transport, "addr", s.Addr, "why", err.Error())
		return &ErrRejected{session.CloseUnauthorized, "unauthorized"}
	case err != nil && h.closing.Load():
		return &ErrRejected{session.CloseGoingAway, "going away"}
	case err != nil:
		h.reject(metrics.RejectStoreUnavailable)
		h.sampled.Log(slog.LevelWarn, "connection rejected: key store unavailable", "key", key, "conn", s.ID, "reason", keystore.Reason(err)) // not the driver's topology dump
		return &ErrRejected{session.CloseTryAgain, "try again later"}
	}
	h.adopt(s, id)
	if err := h.watch(ctx, s); err != nil {
		h.expiry.outdated()
		return err
	}
	if s.Resumes() {
		// Held from registration on: a message published while the
		// history is read reaches s once, after it.
		s.Hold()
	}
	if err := h.register(s); err != nil {
		h.unwatch(s)
		h.expiry.outdated()
		return err
	}
	if s.Resumes() {
		if err := h.resume(ctx, s); err != nil {
			h.unwatch(s)
			if !s.Expires().IsZero() {
				h.expiry.outdated() // its entry, queued by adopt
			}
			return err
		}
	}
	h.alias(s)
	h.live.Add(1)
	h.m.Connects.WithLabelValues(s.Transport).Inc()
	h.m.Connections.WithLabelValues(s.Transport).Inc()
	h.events.emit(event{connected: true, key: s.Key, conn: s.ID, transport: s.Transport, at: time.Now()})
	if h.cfg.Presence != nil {
		h.cfg.Presence.Join(s.Key, s.Transport)
	}
	h.log.Debug("connected", "key", key, "conn", s.ID, "transport", s.Transport)
	return nil
}

// watch makes this node receive s's key's messages (per-key routing)
// before s is registered: what is published from then on reaches it live,
// and what was published before is in the history a resuming s reads
// after. A subscription that cannot be made in time refuses s with
// CloseTryAgain.
func (h *Hub) watch(ctx context.Context, s *session.Session) error {
	if h.cfg.Router == nil {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, h.cfg.KeyCheckTimeout)
	defer cancel()
	if err := h.cfg.Router.Watch(cctx, s.Key); err != nil {
		h.reject(metrics.RejectRouting)
		h.sampled.Log(slog.LevelWarn, "connection rejected: cannot subscribe to the key's channel", "key", keystore.Redact(s.Key), "conn", s.ID, "err", err)
		return &ErrRejected{session.CloseTryAgain, "try again later"}
	}
	return nil
}

func (h *Hub) unwatch(s *session.Session) {
	if h.cfg.Router != nil {
		h.cfg.Router.Unwatch(s.Key)
	}
}

// resume replays s's history after registration; when it cannot be read, s
// is unregistered again and refused with CloseTryAgain (its client retries
// with the same id: nothing is lost).
func (h *Hub) resume(ctx context.Context, s *session.Session) error {
	if err := h.replay(ctx, s, s.Since, true); err != nil {
		h.unregister(s)
		h.reject(metrics.RejectHistory)
		return &ErrRejected{session.CloseTryAgain, "try again later"}
	}
	return nil
}

func (h *Hub) throttled(s *session.Session) error {
	h.reject(metrics.RejectThrottled)
	h.sampled.Log(slog.LevelInfo, "connection rejected: too many failed key checks from this address", "addr", s.Addr, "conn", s.ID, "transport", s.Transport)
	return &ErrRejected{session.CloseTooMany, "too many failed key checks"}
}

// check asks the authenticator about s's credential. At most AuthFailBurst lookups of one
// address run at once, and each asks whether the address still has budget
// only once its turn has come: concurrent wrong keys cannot all slip past a
// check made before any of them failed, while concurrent good keys are
// merely queued. A refused credential (unknown key, bad or expired token,
// a hook's 401/403) spends one unit of the budget.
//
// A bare key with %XX escapes is tried as sent first (the original
// compared the raw query), then, when that is refused, decoded (what this
// gateway used to take): one lookup unless the spellings differ. Each
// refused spelling spends a unit, so the budget bounds the lookups an
// address gets refused, not its checks: a key accepted decoded has spent
// one.
func (h *Hub) check(ctx context.Context, s *session.Session) (id keystore.Identity, throttled bool, err error) {
	release, err := h.lookupSlot(ctx, s.Addr)
	if err != nil {
		return id, false, fmt.Errorf("waiting for a key lookup slot: %w", err)
	}
	defer release() // also when the store panics
	if !h.authFails.Has(s.Addr, time.Now()) {
		return id, true, nil
	}
	decoded := s.DecodedKey()
	if decoded == "" {
		return h.authenticate(ctx, s, s.Key)
	}
	if id, _, err = h.authenticate(ctx, s, s.Key); !errors.Is(err, keystore.ErrUnauthorized) {
		return id, false, err
	}
	if id, throttled, err = h.authenticate(ctx, s, decoded); err == nil {
		s.UseDecodedKey()
	}
	return id, throttled, err
}

// lookupSlot waits (bounded by ctx) for one of the AuthFailBurst key
// lookups an address may have running at once; release gives it back.
func (h *Hub) lookupSlot(ctx context.Context, addr string) (release func(), err error) {
	h.amu.Lock()
	sl := h.slots[addr]
	if sl == nil {
		// Recycled: a connection's admission leaves no garbage behind.
		if sl, _ = h.slotPool.Get().(*slot); sl == nil {
			sl = &slot{ch: make(chan struct{}, h.cfg.AuthFailBurst)}
		}
		h.slots[addr] = sl
	}
	sl.users++
	h.amu.Unlock()
	leave := func() {
		h.amu.Lock()
		if sl.users--; sl.users == 0 {
			delete(h.slots, addr)
			h.slotPool.Put(sl) // empty: its last holder has released
		}
		h.amu.Unlock()
	}
	select {
	case sl.ch <- struct{}{}:
		return func() { <-sl.ch; leave() }, nil
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
}

// slot bounds the key lookups of one address running at once.
type slot struct {
	ch    chan struct{}
	users int // waiting or holding; the entry goes when none
}

// overCap refuses s when its key or address already holds the most
// sessions allowed. Checked before the key lookup (cheap refusals cost the
// store nothing) and again, atomically, when registering.
func (h *Hub) overCap(s *session.Session) error {
	sh := h.shardOf([]byte(s.Key))
	sh.mu.RLock()
	n := len(sh.keys[s.Key])
	sh.mu.RUnlock()
	h.amu.Lock()
	a := h.perAddr[s.Addr]
	h.amu.Unlock()
	return h.capError(s, n, a)
}

func (h *Hub) capError(s *session.Session, perKey, perAddr int) error {
	if max := h.cfg.MaxSessionsPerKey; max > 0 && perKey >= max {
		h.reject(metrics.RejectSessionLimit)
		h.sampled.Log(slog.LevelInfo, "connection rejected: too many connections for this key", "key", keystore.Redact(s.Key), "limit", max, "conn", s.ID, "transport", s.Transport)
		return &ErrRejected{session.CloseTooMany, "too many connections for this key"}
	}
	if max := h.cfg.MaxSessionsPerAddr; max > 0 && perAddr >= max {
		h.reject(metrics.RejectSessionLimit)
		h.sampled.Log(slog.LevelInfo, "connection rejected: too many connections from this address", "addr", s.Addr, "limit", max, "conn", s.ID, "transport", s.Transport)
		return &ErrRejected{session.CloseTooMany, "too many connections from this address"}
	}
	return nil
}

// register adds s to the registry unless a cap or shutdown forbids it.
func (h *Hub) register(s *session.Session) error {
	sh := h.shardOf([]byte(s.Key))
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if h.closing.Load() {
		return &ErrRejected{session.CloseGoingAway, "going away"}
	}
	h.amu.Lock()
	defer h.amu.Unlock()
	if err := h.capError(s, len(sh.keys[s.Key]), h.perAddr[s.Addr]); err != nil {
		return err
	}
	sh.keys[s.Key] = append(sh.keys[s.Key], s)
	h.perAddr[s.Addr]++
	return nil
}

func (h *Hub) reject(reason string) { h.m.Rejections.WithLabelValues(reason).Inc() }

// Leave unregisters s (if Admit registered it) and publishes its
// disconnected event. The disconnect reason is the server's verdict when
// the server closed s (revoked, too slow, shutdown, …), else fallback (the
// transport's view: client, idle, write error). Safe to call for sessions
// that were never admitted, and more than once.
func (h *Hub) Leave(s *session.Session, fallback string) { h.leave(s, fallback) }

// leave is Leave, reporting whether s was registered.
func (h *Hub) leave(s *session.Session, fallback string) bool {
	if !h.unregister(s) {
		return false
	}
	h.unwatch(s)
	h.unalias(s)
	if !s.Expires().IsZero() {
		h.expiry.outdated()
	}
	reason := fallback
	if s.IsClosed() && !s.ClosedByPeer() {
		reason = CloseReason(s.CloseCode(), fallback)
	}
	h.live.Add(-1)
	h.m.Connections.WithLabelValues(s.Transport).Dec()
	h.m.Disconnects.WithLabelValues(reason).Inc()
	h.events.emit(event{connected: false, key: s.Key, conn: s.ID, transport: s.Transport, at: time.Now()})
	if h.cfg.Presence != nil {
		h.cfg.Presence.Leave(s.Key, s.Transport)
	}
	h.log.Debug("disconnected", "key", keystore.Redact(s.Key), "conn", s.ID, "reason", reason)
	return true
}

func (h *Hub) unregister(s *session.Session) bool {
	sh := h.shardOf([]byte(s.Key))
	sh.mu.Lock()
	defer sh.mu.Unlock()
	list := sh.keys[s.Key]
	i := slices.Index(list, s)
	if i < 0 {
		return false
	}
	list[i] = list[len(list)-1]
	list[len(list)-1] = nil
	if list = list[:len(list)-1]; len(list) == 0 {
		delete(sh.keys, s.Key)
	} else {
		sh.keys[s.Key] = list
	}
	h.amu.Lock()
	if h.perAddr[s.Addr]--; h.perAddr[s.Addr] <= 0 {
		delete(h.perAddr, s.Addr)
	}
	h.amu.Unlock()
	return true
}

// Recover is deferred by every goroutine that serves one connection: a
// panic there (a bug reached by some input) ends that connection — closed
// with 1011, disconnect reason internal_error, one log line — instead of
// the process. cleanup, when not nil, then releases the transport's
// resources.
func (h *Hub) Recover(s *session.Session, cleanup func()) {
	r := recover()
	if r == nil {
		return
	}
	h.log.Error("connection failed: internal error", "key", keystore.Redact(s.Key), "conn", s.ID,
		"transport", s.Transport, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	s.Close(session.CloseInternal, "internal error")
	if !h.leave(s, metrics.DiscInternal) {
		h.reject(metrics.RejectInternal) // it failed before it was admitted
	}
	if cleanup != nil {
		cleanup()
	}
}

// recheck re-validates every connected key; keys the store no longer knows
// have their sessions closed with CloseRevoked. When the store cannot answer,
// the round stops and nothing is closed.
func (h *Hub) recheck(ctx context.Context) {
	defer func() {
		// A key store bug must not take the process down; the next round retries.
		if r := recover(); r != nil {
			h.log.Error("key re-check failed: internal error", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	rev, ok := h.cfg.Auth.(keystore.Revocable)
	if !ok {
		return // tokens and hook answers are bounded by their expiry instead
	}
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
		ok, err := rev.Contains(cctx, k)
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
