package hub

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// askedStore records the keys it is asked about.
type askedStore struct {
	*keystore.Memory
	mu    sync.Mutex
	asked []string
}

func (s *askedStore) Contains(ctx context.Context, key string) (bool, error) {
	s.mu.Lock()
	s.asked = append(s.asked, key)
	s.mu.Unlock()
	return s.Memory.Contains(ctx, key)
}

// take returns the keys asked about since the last call.
func (s *askedStore) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.asked
	s.asked = nil
	return out
}

// TestKeyTriedAsSentThenDecoded: a bare key with %XX escapes is looked up
// as sent first (the original compared the raw query), then decoded; the
// store is asked once when the spellings are equal. Each refused spelling
// spends a unit of the address's failed-key budget: a key accepted decoded
// has spent one, a key refused in both spellings two.
func TestKeyTriedAsSentThenDecoded(t *testing.T) {
	store := &askedStore{Memory: keystore.NewMemory("pct%41key", "plusAkey", "x y")}
	// Four failed lookups allowed per address, none refilled during the test.
	h := newHub(t, store, nil, func(c *Config) { c.AuthFailBurst, c.AuthFailRate = 4, 1e-9 })
	try := func(addr, key, decoded string) (*session.Session, error) {
		s := session.New(h.NewID(), session.Peer{Key: key, DecodedKey: decoded, Addr: addr}, "test", &fakeTransport{}, 100)
		return s, h.Admit(context.Background(), s)
	}
	expect := func(what string, s *session.Session, err error, key string, asked ...string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if s.Key != key || s.DecodedKey() != "" || s.Credential() != "" {
			t.Fatalf("%s: admitted as %q (decoded %q, credential %q), want %q", what, s.Key, s.DecodedKey(), s.Credential(), key)
		}
		if got := store.take(); !slices.Equal(got, asked) {
			t.Fatalf("%s: store asked %q, want %q", what, got, asked)
		}
	}
	throttled := func(what, addr string) {
		t.Helper()
		_, err := try(addr, "nokey", "")
		var rej *ErrRejected
		if !errors.As(err, &rej) || rej.Code != session.CloseTooMany {
			t.Fatalf("%s: %v, want 4429", what, err)
		}
		if got := store.take(); len(got) != 0 {
			t.Fatalf("%s: a throttled check asked the store about %q", what, got)
		}
	}

	const a = "192.0.2.1"
	s, err := try(a, "pct%41key", "pctAkey")
	expect("stored with its '%'", s, err, "pct%41key", "pct%41key") // accepted as sent: nothing spent
	for range 2 {
		s, err = try(a, "plus%41key", "plusAkey")
		expect("stored decoded", s, err, "plusAkey", "plus%41key", "plusAkey") // one spent each
	}
	s, err = try(a, "x%20y", "x y")
	expect("stored decoded with a space", s, err, "x y", "x%20y", "x y") // one spent: one left
	// The last unit goes on the spelling as sent; the decoded one, asked
	// within the same check, is still admitted.
	s, err = try(a, "plus%41key", "plusAkey")
	expect("stored decoded, last unit", s, err, "plusAkey", "plus%41key", "plusAkey")
	if got := testutil.ToFloat64(h.m.Rejections.WithLabelValues(metrics.RejectUnauthorized)); got != 0 {
		t.Fatalf("rejections{unauthorized} = %v after refusals of the spelling as sent only", got)
	}
	if got := len(h.Sessions("plusAkey")); got != 3 {
		t.Fatalf("%d sessions of plusAkey, want 3", got)
	}
	throttled("four refused spellings", a)

	// Refused in both spellings: two units.
	const b = "192.0.2.2"
	for i := range 2 {
		_, err = try(b, "no%41key", "noAkey")
		var rej *ErrRejected
		if !errors.As(err, &rej) || rej.Code != session.CloseUnauthorized {
			t.Fatalf("unknown in both spellings, attempt %d: %v, want 4401", i+1, err)
		}
		if got := store.take(); !slices.Equal(got, []string{"no%41key", "noAkey"}) {
			t.Fatalf("unknown in both spellings: store asked %q", got)
		}
	}
	throttled("two checks refused in both spellings", b)
}

// TestKeyWithoutEscapesIsLookedUpOnce: equal spellings cost one lookup,
// accepted or refused.
func TestKeyWithoutEscapesIsLookedUpOnce(t *testing.T) {
	store := &askedStore{Memory: keystore.NewMemory("good")}
	h := newHub(t, store, nil, nil)
	for _, key := range []string{"good", "bad"} {
		s := session.New(h.NewID(), session.Peer{Key: key, Addr: "192.0.2.1"}, "test", &fakeTransport{}, 100)
		_ = h.Admit(context.Background(), s)
		if got := store.take(); !slices.Equal(got, []string{key}) {
			t.Fatalf("%s: store asked %q, want it once", key, got)
		}
	}
}
