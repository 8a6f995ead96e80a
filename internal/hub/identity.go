package hub

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/session"
)

// authenticate asks the authenticator about credential, presented by s,
// and spends a unit of s's address's failure budget on a refusal.
func (h *Hub) authenticate(ctx context.Context, s *session.Session, credential string) (keystore.Identity, bool, error) {
	id, err := h.verify(ctx, s, credential)
	if errors.Is(err, keystore.ErrUnauthorized) {
		h.authFails.Take(s.Addr, time.Now())
	}
	return id, false, err
}

// verify is authenticate without spending the budget.
func (h *Hub) verify(ctx context.Context, s *session.Session, credential string) (keystore.Identity, error) {
	id, err := h.cfg.Auth.Authenticate(ctx, keystore.Credential{Secret: credential, Transport: s.Transport, Addr: s.Addr, Origin: s.Origin()})
	if err == nil && id.Key == "" {
		err = fmt.Errorf("%w: no routing key in the answer", keystore.ErrUnauthorized)
	}
	if err == nil && !id.Expires.IsZero() && !id.Expires.After(time.Now()) {
		err = fmt.Errorf("%w: expired", keystore.ErrUnauthorized)
	}
	return id, err
}

// adopt gives s the identity its credential proved: its routing key and,
// for a credential that expires, a place in the expiry queue — taken
// before s is registered, so it cannot outlive its token even when
// admission races with the expiry.
func (h *Hub) adopt(s *session.Session, id keystore.Identity) {
	s.SetIdentity(id.Key, s.Key, id.Expires) // keeps the Origin only for a credential that expires: a refresh asks again
	if id.Expires.IsZero() {
		return
	}
	h.expiry.add(s, s.Expires())
}

// refusal names a refused credential in a log line.
func refusal(err error) string {
	if errors.Is(err, keystore.ErrUnknownKey) {
		return "unknown key"
	}
	return "credential refused"
}

// alias makes s findable by the credential it was admitted with, when
// that is not its key (a POST of an EventSource or polling client names
// its connection by the credential in its URL).
func (h *Hub) alias(s *session.Session) {
	c := s.Credential()
	if c == "" {
		return
	}
	h.amu.Lock()
	h.aliases[c] = append(h.aliases[c], s)
	h.amu.Unlock()
}

func (h *Hub) unalias(s *session.Session) {
	c := s.Credential()
	if c == "" {
		return
	}
	h.amu.Lock()
	defer h.amu.Unlock()
	list := h.aliases[c]
	for i, x := range list {
		if x == s {
			list[i] = list[len(list)-1]
			list[len(list)-1] = nil
			list = list[:len(list)-1]
			break
		}
	}
	if len(list) == 0 {
		delete(h.aliases, c)
	} else {
		h.aliases[c] = list
	}
}

func (h *Hub) findAlias(credential, client string) *session.Session {
	h.amu.Lock()
	defer h.amu.Unlock()
	for _, s := range h.aliases[credential] {
		if s.Client == client && !s.IsClosed() {
			return s
		}
	}
	return nil
}
