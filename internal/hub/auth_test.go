package hub

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// fakeTokens is an Authenticator whose credentials spell their identity:
// "tok:<routing key>:<expiry, unix seconds>" (0: never). "down" makes it
// unreachable.
type fakeTokens struct{ down atomic.Bool }

func token(key string, exp time.Time) string {
	return "tok:" + key + ":" + strconv.FormatInt(exp.Unix(), 10)
}

func (f *fakeTokens) Authenticate(_ context.Context, c keystore.Credential) (keystore.Identity, error) {
	if f.down.Load() {
		return keystore.Identity{}, fmt.Errorf("%w: down", keystore.ErrUnavailable)
	}
	parts := strings.Split(c.Secret, ":")
	if len(parts) != 3 || parts[0] != "tok" {
		return keystore.Identity{}, fmt.Errorf("%w: not a token", keystore.ErrUnauthorized)
	}
	sec, _ := strconv.ParseInt(parts[2], 10, 64)
	id := keystore.Identity{Key: parts[1]}
	if sec != 0 {
		id.Expires = time.Unix(sec, 0)
	}
	return id, nil
}
func (f *fakeTokens) Ping(context.Context) error  { return nil }
func (f *fakeTokens) Close(context.Context) error { return nil }

func tokenHub(t *testing.T) (*Hub, *fakeTokens) {
	ft := &fakeTokens{}
	return newHub(t, nil, nil, func(c *Config) { c.Auth = ft; c.AuthFailBurst = 3 }), ft
}

func admitToken(t *testing.T, h *Hub, tok, client string) (*session.Session, *fakeTransport) {
	t.Helper()
	tr := &fakeTransport{}
	s := session.New(h.NewID(), session.Peer{Key: tok, Addr: "192.0.2.9", Client: client}, "test", tr, 1<<20)
	if err := h.Admit(context.Background(), s); err != nil {
		t.Fatalf("admit %s: %v", tok, err)
	}
	return s, tr
}

func TestTokenRoutesToItsSubject(t *testing.T) {
	h, _ := tokenHub(t)
	exp := time.Now().Add(time.Hour)
	s, _ := admitToken(t, h, token("alice", exp), "sid:1")
	if s.Key != "alice" || s.Credential() != token("alice", exp) || !s.Expires().Equal(time.Unix(exp.Unix(), 0)) {
		t.Fatalf("session key %q credential %q expires %v", s.Key, s.Credential(), s.Expires())
	}
	h.Dispatch([]byte(`{"recipients":["alice"],"data":1}`))
	if got := payloads(s); len(got) != 1 {
		t.Fatalf("the token's subject got %v", got)
	}
	// The POSTs of an HTTP-transport client name it by its credential.
	if h.Find(token("alice", exp), "sid:1") != s {
		t.Fatal("Find by credential missed the session")
	}
	if h.Find("alice", "sid:1") != nil {
		t.Fatal("Find by the bare routing key matched a token session")
	}
	h.Leave(s, "client")
	if h.Find(token("alice", exp), "sid:1") != nil || len(h.aliases) != 0 {
		t.Fatal("alias kept after leave")
	}
}

func TestRefusedTokensSpendTheAddressBudget(t *testing.T) {
	h, _ := tokenHub(t) // AuthFailBurst 3
	for i := range 3 {
		err := h.Admit(context.Background(), session.New(h.NewID(), session.Peer{Key: "forged", Addr: "192.0.2.9"}, "test", &fakeTransport{}, 100))
		if code, _ := Verdict(err); code != session.CloseUnauthorized {
			t.Fatalf("attempt %d: %v, want 4401", i, err)
		}
	}
	err := h.Admit(context.Background(), session.New(h.NewID(), session.Peer{Key: token("a", time.Now().Add(time.Hour)), Addr: "192.0.2.9"}, "test", &fakeTransport{}, 100))
	if code, _ := Verdict(err); code != session.CloseTooMany {
		t.Fatalf("after the burst: %v, want 4429", err)
	}
	if got := testutil.ToFloat64(h.m.Rejections.WithLabelValues(metrics.RejectUnauthorized)); got != 3 {
		t.Fatalf("unauthorized rejections %v, want 3", got)
	}
}

func TestExpiredOrUnavailableAtAdmission(t *testing.T) {
	h, ft := tokenHub(t)
	err := h.Admit(context.Background(), session.New(h.NewID(), session.Peer{Key: token("a", time.Now().Add(-time.Second)), Addr: "192.0.2.1"}, "test", &fakeTransport{}, 100))
	if code, _ := Verdict(err); code != session.CloseUnauthorized {
		t.Fatalf("expired at admission: %v, want 4401", err)
	}
	ft.down.Store(true)
	err = h.Admit(context.Background(), session.New(h.NewID(), session.Peer{Key: token("a", time.Now().Add(time.Hour)), Addr: "192.0.2.1"}, "test", &fakeTransport{}, 100))
	if code, _ := Verdict(err); code != session.CloseTryAgain {
		t.Fatalf("authenticator down: %v, want 1013", err)
	}
}

// TestExpiryClosesAt drives the expiry with explicit clocks: nothing here
// waits for wall-clock time to pass.
func TestExpiryClosesAt(t *testing.T) {
	h, _ := tokenHub(t)
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	s, tr := admitToken(t, h, token("alice", exp), "")
	never, _ := admitToken(t, h, token("bob", time.Time{}), "")
	h.expire(exp.Add(-time.Second))
	if s.IsClosed() {
		t.Fatal("closed before its token expired")
	}
	h.expire(exp)
	if !s.IsClosed() || s.CloseCode() != session.CloseRevoked || tr.closed[0] != session.CloseRevoked {
		t.Fatalf("at exp: closed %v code %d, want 4403", s.IsClosed(), s.CloseCode())
	}
	if never.IsClosed() {
		t.Fatal("a session without expiry was closed")
	}
	h.Leave(s, "client")
	if got := testutil.ToFloat64(h.m.Disconnects.WithLabelValues(metrics.DiscRevoked)); got != 1 {
		t.Fatalf("revoked disconnects %v", got)
	}
}

func TestRefreshFrame(t *testing.T) {
	h, ft := tokenHub(t)
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	s, _ := admitToken(t, h, token("alice", exp), "")
	later := exp.Add(time.Hour)
	reply, err := h.ClientText(s, []byte(`{"token":"`+token("alice", later)+`"}`))
	if err != nil || reply != nil {
		t.Fatalf("refresh: %q %v", reply, err)
	}
	if !s.Expires().Equal(later) {
		t.Fatalf("expires %v, want %v", s.Expires(), later)
	}
	h.expire(exp.Add(time.Second)) // past the first token's exp
	if s.IsClosed() {
		t.Fatal("closed at the first token's exp despite the fresh one")
	}
	// The authenticator down: the refresh is skipped, the session stays.
	ft.down.Store(true)
	if _, err := h.ClientText(s, []byte(`{"token":"`+token("alice", later.Add(time.Hour))+`"}`)); err != nil || s.IsClosed() || !s.Expires().Equal(later) {
		t.Fatalf("refresh while down: err %v closed %v expires %v", err, s.IsClosed(), s.Expires())
	}
	ft.down.Store(false)
	h.expire(later)
	if s.CloseCode() != session.CloseRevoked {
		t.Fatalf("at the fresh token's exp: code %d, want 4403", s.CloseCode())
	}
}

func TestRefreshRefused(t *testing.T) {
	for name, frame := range map[string]string{
		"another subject": `{"token":"` + token("mallory", time.Now().Add(2*time.Hour)) + `"}`,
		"bad token":       `{"token":"forged"}`,
		"expired token":   `{"token":"` + token("alice", time.Now().Add(-time.Minute)) + `"}`,
		"not a string":    `{"token":null}`,
	} {
		t.Run(name, func(t *testing.T) {
			h, _ := tokenHub(t)
			s, tr := admitToken(t, h, token("alice", time.Now().Add(time.Hour)), "")
			_, _ = h.ClientText(s, []byte(frame))
			if name == "not a string" {
				// {"token":null} has no token: it is ordinary text.
				if s.IsClosed() {
					t.Fatal("closed on ordinary text")
				}
				return
			}
			if !s.IsClosed() || tr.closed[0] != session.CloseRevoked {
				t.Fatalf("closed %v (%v), want 4403", s.IsClosed(), tr.closed)
			}
		})
	}
}

func TestTokenFrameIsOrdinaryTextWithoutExpiry(t *testing.T) {
	h := newHub(t, keystore.NewMemory("k"), nil, func(c *Config) { c.UpstreamChannel = "up" })
	s, _ := admit(t, h, "k", 100)
	if _, err := h.ClientText(s, []byte(`{"token":"x"}`)); err != nil || s.IsClosed() {
		t.Fatalf("plain-key session: %v closed %v", err, s.IsClosed())
	}
	if got := testutil.ToFloat64(h.m.ClientMessages.WithLabelValues("upstream")); got != 1 {
		t.Fatalf("upstream %v, want the frame published as before", got)
	}
}

func TestExpiryHeapDropsEndedSessions(t *testing.T) {
	h, _ := tokenHub(t)
	exp := time.Now().Add(time.Hour)
	for i := range 3000 {
		s, _ := admitToken(t, h, token("k"+strconv.Itoa(i), exp), "")
		s.Close(session.CloseNormal, "")
		h.Leave(s, "client")
	}
	admitToken(t, h, token("last", exp), "")
	h.expiry.mu.Lock()
	n := len(h.expiry.q)
	h.expiry.mu.Unlock()
	if n > 2100 {
		t.Fatalf("expiry heap holds %d entries after 3000 sessions ended, want it compacted", n)
	}
}
