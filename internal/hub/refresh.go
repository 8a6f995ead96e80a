package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/session"
)

// tokenFrame is the client text that presents a fresh credential:
// {"token":"<fresh JWT>"}.
type tokenFrame struct {
	Token *string `json:"token"`
}

// refresh handles client text of a session whose credential expires when
// it is a token frame, and reports whether it was one (other text goes on
// as before). A fresh credential of the same routing key moves the
// session's expiry; one that is refused, or names another key, closes the
// session with CloseRevoked (and spends its address's failure budget, like
// a wrong key at connect). When the authenticator cannot answer, the
// session keeps its old expiry: the client may try again before it.
func (h *Hub) refresh(s *session.Session, text []byte) bool {
	if s.Expires().IsZero() || !bytes.HasPrefix(bytes.TrimSpace(text), []byte("{")) {
		return false
	}
	var f tokenFrame
	if json.Unmarshal(text, &f) != nil || f.Token == nil {
		return false
	}
	h.m.ClientMessages.WithLabelValues("token").Inc()
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.KeyCheckTimeout)
	defer cancel()
	id, _, err := h.authenticate(ctx, s, *f.Token)
	switch {
	case err == nil && id.Key != s.Key:
		err = errors.New("the fresh token names another routing key")
	case err != nil && !errors.Is(err, keystore.ErrUnauthorized):
		h.sampled.Log(slog.LevelWarn, "token refresh skipped: key store unavailable", "key", keystore.Redact(s.Key), "conn", s.ID, "reason", keystore.Reason(err)) // as at admission: the short reason
		return true
	}
	if err != nil {
		h.m.Revocations.Inc()
		h.sampled.Log(slog.LevelInfo, "token refresh refused; connection closed", "key", keystore.Redact(s.Key), "conn", s.ID, "why", err.Error())
		s.Close(session.CloseRevoked, "token refused")
		return true
	}
	old := s.Expires()
	s.SetExpires(id.Expires)
	if s.Expires().Equal(old) {
		// The same deadline (the same token sent again): its entry is
		// queued already; another would be one more per frame, all
		// current, which compaction could never drop.
		return true
	}
	h.expiry.outdated() // the old deadline's entry
	if !id.Expires.IsZero() {
		h.expiry.add(s, s.Expires())
	}
	h.log.Debug("token refreshed", "key", keystore.Redact(s.Key), "conn", s.ID, "expires", id.Expires)
	return true
}
