package auth

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/keystore"
)

// patience is the timeout of a call that must be answered (an admission,
// a refusal): only a hang takes that long, so a slow or loaded machine
// never turns an answer into a timeout.
const patience = time.Minute

// backend is a fake auth hook: answer decides each call's status and body.
type backend struct {
	calls  atomic.Int32
	last   atomic.Pointer[HookRequest]
	answer func(HookRequest) (int, string)
	srv    *httptest.Server
}

func newBackend(t *testing.T, answer func(HookRequest) (int, string)) *backend {
	b := &backend{answer: answer}
	b.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.calls.Add(1)
		var req HookRequest
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&req) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		b.last.Store(&req)
		code, body := b.answer(req)
		w.WriteHeader(code)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(b.srv.Close)
	return b
}

func hookAuth(h *Hook, key string) (keystore.Identity, error) {
	return h.Authenticate(context.Background(), keystore.Credential{Secret: key, Transport: "eventsource", Addr: "192.0.2.7", Origin: "https://app.example"})
}

func TestHookAdmits(t *testing.T) {
	b := newBackend(t, func(r HookRequest) (int, string) {
		switch r.Key {
		case "plain":
			return 200, ""
		case "named":
			return 200, `{"key":"user-42","expires":"2099-01-02T03:04:05Z"}`
		case "unix":
			return 200, `{"expires":4102444800}`
		}
		return 401, ""
	})
	h := NewHook(HookConfig{URL: b.srv.URL, Timeout: patience})
	id, err := hookAuth(h, "plain")
	if err != nil || id.Key != "plain" || !id.Expires.IsZero() {
		t.Fatalf("200 with no body: %+v %v, want the credential as key, no expiry", id, err)
	}
	if got := *b.last.Load(); got != (HookRequest{Key: "plain", Transport: "eventsource", Addr: "192.0.2.7", Origin: "https://app.example"}) {
		t.Fatalf("the hook was sent %+v", got)
	}
	id, err = hookAuth(h, "named")
	if err != nil || id.Key != "user-42" || !id.Expires.Equal(time.Date(2099, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Fatalf("200 naming a key: %+v %v", id, err)
	}
	id, err = hookAuth(h, "unix")
	if err != nil || id.Key != "unix" || id.Expires.Unix() != 4102444800 {
		t.Fatalf("200 with Unix expires: %+v %v", id, err)
	}
}

func TestHookRefusesAndFails(t *testing.T) {
	slow := make(chan struct{})
	b := newBackend(t, func(r HookRequest) (int, string) {
		switch r.Key {
		case "401":
			return 401, ""
		case "403":
			return 403, `{"error":"banned"}`
		case "500":
			return 500, ""
		case "503":
			return 503, ""
		case "404":
			return 404, ""
		case "garbage":
			return 200, "<html>"
		case "slow":
			<-slow
		}
		return 200, ""
	})
	t.Cleanup(func() { close(slow) }) // before the server's Close (cleanups run last first)
	h := NewHook(HookConfig{URL: b.srv.URL, Timeout: patience, CacheTTL: time.Minute})
	// A short timeout only for the key whose answer never comes.
	short := NewHook(HookConfig{URL: b.srv.URL, Timeout: 200 * time.Millisecond, CacheTTL: time.Minute})
	for _, key := range []string{"401", "403"} {
		if _, err := hookAuth(h, key); !errors.Is(err, keystore.ErrUnauthorized) {
			t.Errorf("%s: %v, want a refusal", key, err)
		}
	}
	for _, key := range []string{"500", "503", "404", "garbage", "slow"} {
		hk := h
		if key == "slow" {
			hk = short
		}
		_, err := hookAuth(hk, key)
		if !errors.Is(err, keystore.ErrUnavailable) || errors.Is(err, keystore.ErrUnauthorized) {
			t.Errorf("%s: %v, want unavailable (try again)", key, err)
		}
		if err != nil && strings.Contains(err.Error(), `"`+key+`"`) {
			t.Errorf("%s: the error quotes the credential: %v", key, err)
		}
	}
	// Refusals and failures are not cached: each is asked again.
	n := b.calls.Load()
	_, _ = hookAuth(h, "401")
	_, _ = hookAuth(h, "500")
	if got := b.calls.Load() - n; got != 2 {
		t.Fatalf("calls for a repeated refusal and failure: %d, want 2", got)
	}
}

func TestHookCache(t *testing.T) {
	var allow atomic.Bool
	allow.Store(true)
	b := newBackend(t, func(r HookRequest) (int, string) {
		if !allow.Load() {
			return 403, ""
		}
		return 200, `{"key":"k-` + r.Key + `"}`
	})
	h := NewHook(HookConfig{URL: b.srv.URL, Timeout: patience, CacheTTL: time.Hour, CacheSize: 2})
	for range 3 {
		if id, err := hookAuth(h, "a"); err != nil || id.Key != "k-a" {
			t.Fatalf("a: %+v %v", id, err)
		}
	}
	if n := b.calls.Load(); n != 1 {
		t.Fatalf("calls for one key asked 3 times: %d, want 1 (cached)", n)
	}
	// Another origin is another question.
	if _, err := h.Authenticate(context.Background(), keystore.Credential{Secret: "a", Origin: "https://other.example"}); err != nil {
		t.Fatal(err)
	}
	if n := b.calls.Load(); n != 2 {
		t.Fatalf("calls after another origin: %d, want 2", n)
	}
	// Bounded: a third entry evicts one; the cache never holds more than 2.
	_, _ = hookAuth(h, "b")
	if len(h.cached) > 2 {
		t.Fatalf("cache holds %d entries, bound 2", len(h.cached))
	}
	// The backend withdraws: cached admissions still pass until the TTL.
	allow.Store(false)
	h.mu.Lock()
	for k, e := range h.cached {
		e.until = time.Now().Add(-time.Second) // the TTL passed
		h.cached[k] = e
	}
	h.mu.Unlock()
	if _, err := hookAuth(h, "b"); !errors.Is(err, keystore.ErrUnauthorized) {
		t.Fatalf("after the TTL: %v, want the backend asked again (403)", err)
	}

	// CacheTTL 0: every admission asks.
	h0 := NewHook(HookConfig{URL: b.srv.URL, Timeout: patience})
	allow.Store(true)
	n := b.calls.Load()
	_, _ = hookAuth(h0, "c")
	_, _ = hookAuth(h0, "c")
	if got := b.calls.Load() - n; got != 2 {
		t.Fatalf("calls without a cache: %d, want 2", got)
	}
}

func TestHookCacheStopsAtExpiry(t *testing.T) {
	b := newBackend(t, func(HookRequest) (int, string) {
		return 200, `{"expires":"` + time.Now().Add(-time.Second).Format(time.RFC3339) + `"}`
	})
	h := NewHook(HookConfig{URL: b.srv.URL, Timeout: patience, CacheTTL: time.Hour})
	_, _ = hookAuth(h, "a")
	_, _ = hookAuth(h, "a")
	if n := b.calls.Load(); n != 2 {
		t.Fatalf("an admission already expired was cached: %d calls, want 2", n)
	}
}
