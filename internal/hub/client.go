package hub

import (
	"errors"
	"log/slog"
	"time"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// Heartbeat is the original's answer to a client's "ping".
const Heartbeat = "heartbeat message"

// ErrRateLimited is returned by ClientText when a client sends faster than
// the configured rate; transports answer 4029 (WebSocket) or 429 (HTTP).
var ErrRateLimited = errors.New("client message rate exceeded")

// ClientText handles one text message a client sent on session s, whatever
// the transport. The rate limit is per key, so spreading messages over
// several connections of one key gains nothing. On a session whose
// credential expires, {"token":"…"} presents a fresh one (refresh.go).
// "ping" returns the heartbeat reply; any other text is
// published on the upstream channel as {"key","data","conn","at"} when one
// is configured, and otherwise counted and ignored. Size limits are the
// transports' (they must refuse before reading a whole oversized message).
func (h *Hub) ClientText(s *session.Session, text []byte) (reply []byte, err error) {
	if !h.clientText.Take(s.Key, time.Now()) {
		h.m.ClientMessages.WithLabelValues("rate_limited").Inc()
		h.sampled.Log(slog.LevelInfo, "client message refused: rate limit", "key", keystore.Redact(s.Key), "conn", s.ID)
		return nil, ErrRateLimited
	}
	if h.refresh(s, text) {
		return nil, nil
	}
	if string(text) == "ping" {
		h.m.ClientMessages.WithLabelValues("ping").Inc()
		return []byte(Heartbeat), nil
	}
	if h.cfg.UpstreamChannel == "" {
		h.m.ClientMessages.WithLabelValues("ignored").Inc()
		return nil, nil
	}
	h.m.ClientMessages.WithLabelValues("upstream").Inc()
	h.events.emit(event{upstream: append([]byte(nil), text...), key: s.Key, conn: s.ID, at: time.Now()})
	return nil, nil
}

// CloseReason maps a server-side close code to its disconnect metric
// reason, or fallback for codes that are not the server's own verdicts.
func CloseReason(code int, fallback string) string {
	switch code {
	case session.CloseTooSlow:
		return metrics.DiscTooSlow
	case session.CloseRevoked:
		return metrics.DiscRevoked
	case session.CloseGoingAway:
		return metrics.DiscShutdown
	case session.CloseServiceRestart:
		return metrics.DiscDrain
	case session.CloseTooBig:
		return metrics.DiscTooBig
	case session.CloseProtocol:
		return metrics.DiscProtocol
	case session.CloseRateLimited:
		return metrics.DiscRateLimited
	case session.CloseInternal:
		return metrics.DiscInternal
	case session.CloseInvalidData:
		return metrics.DiscInvalidData
	}
	return fallback
}
