package auth

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wspubsub/wspubsub/internal/keystore"
)

// The refetch on an unknown kid ran under the limiter's 1 ms wait bound,
// which also bounded the HTTP request: against any provider that takes
// more than a millisecond to answer (every real one), a key rotated in was
// refused (4401) until the 15-minute refresh.
func TestJWKSRotationWithASlowProvider(t *testing.T) {
	p := newIDP(t, "k1")
	var slow atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if slow.Load() {
			time.Sleep(50 * time.Millisecond) // a provider across a network
		}
		p.serve(w, r)
	}))
	t.Cleanup(srv.Close)
	j, err := NewJWKS(JWKSConfig{URL: srv.URL, Timeout: patience, UnknownKIDEvery: time.Hour,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.Close(context.Background()) })
	slow.Store(true) // the refetch for k2 takes 50 ms; made-up kids are refused at once (the limiter's next slot is an hour away)
	expectRotatedIn(t, j, p, p.fetches.Load())
}

// A JWKS URL may carry credentials (user info, a query token): the
// refresh-failure log line named it whole.
func TestJWKSLogHidesURLCredentials(t *testing.T) {
	p := newIDP(t, "k1")
	p.status = http.StatusInternalServerError
	var logs bytes.Buffer
	u := strings.Replace(p.srv.URL, "http://", "http://jwksuser:jwkspass@", 1) + "/jwks?access_token=tok3n"
	j, err := NewJWKS(JWKSConfig{URL: u, Timeout: patience, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.Close(context.Background()) })
	if !strings.Contains(logs.String(), "cannot fetch the JWKS") {
		t.Fatalf("no refresh-failure line: %s", logs.String())
	}
	for _, s := range []string{"jwkspass", "tok3n"} {
		if strings.Contains(logs.String(), s) {
			t.Fatalf("log shows %q: %s", s, logs.String())
		}
	}
}

// The hook's client followed redirects: a 307 re-POSTed the client's
// credential to wherever the Location pointed, and what answered there
// admitted the client — where the README promises 1013 for any status
// other than 200, 401 and 403.
func TestHookDoesNotFollowRedirects(t *testing.T) {
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		_, _ = w.Write([]byte(`{"key":"admin"}`))
	}))
	t.Cleanup(other.Close)
	for _, code := range []int{http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other.URL+"/collect", code)
		}))
		h := NewHook(HookConfig{URL: hook.URL, Timeout: patience})
		id, err := hookAuth(h, "secret-key")
		hook.Close()
		if err == nil || !errors.Is(err, keystore.ErrUnavailable) {
			t.Fatalf("hook answering %d: %+v %v, want unavailable (1013)", code, id, err)
		}
	}
	if n := elsewhere.Load(); n != 0 {
		t.Fatalf("the redirect target was called %d times with the credential", n)
	}
}

// An expiry in Unix milliseconds (JavaScript's Date.now(), a common slip)
// was read as seconds: a time tens of thousands of years away, so the
// connection silently never expired.
func TestExpiryInMillisecondsIsRefused(t *testing.T) {
	ms := time.Now().Add(time.Hour).UnixMilli()
	b := newBackend(t, func(HookRequest) (int, string) {
		return 200, `{"key":"u1","expires":` + strconv.FormatInt(ms, 10) + `}`
	})
	h := NewHook(HookConfig{URL: b.srv.URL, Timeout: patience})
	if id, err := hookAuth(h, "k"); !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("hook expires in ms: %+v %v, want unavailable (the hook is wrong)", id, err)
	}
	j := mustJWT(t, JWTConfig{Key: secret})
	tok := sign(t, jwt.SigningMethodHS256, []byte(secret), "", jwt.MapClaims{"sub": "u1", "exp": ms})
	_, err := authenticate(j, tok)
	wantRefused(t, err, "exp in milliseconds")
	// exp 9999999999 (2286), the usual "never", is still a valid token.
	tok = sign(t, jwt.SigningMethodHS256, []byte(secret), "", jwt.MapClaims{"sub": "u1", "exp": 9999999999})
	if id, err := authenticate(j, tok); err != nil || id.Key != "u1" {
		t.Fatalf("exp 9999999999: %+v %v", id, err)
	}
}

// With the cache full of live admissions (a hook that admits any opaque
// id, an attacker connecting with fresh ones), every new admission walked
// the whole map under the cache's lock to evict one entry: 100,000 entries
// per connection, serializing every admission.
func TestHookCacheEvictsInBatches(t *testing.T) {
	b := newBackend(t, func(HookRequest) (int, string) { return 200, "" })
	const size = 800
	h := NewHook(HookConfig{URL: b.srv.URL, Timeout: patience, CacheTTL: time.Hour, CacheSize: size})
	for i := range size {
		if _, err := hookAuth(h, "id-"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := hookAuth(h, "one-more"); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	n := len(h.cached)
	h.mu.Unlock()
	if n > size-size/8+1 {
		t.Fatalf("cache holds %d of %d after an insertion into a full cache: evicting one at a time", n, size)
	}
}

// An --auth-url may carry a credential in its query (?token=…); a call
// that failed returned net/http's error, which quotes the whole URL, and
// the hub logs it (a refresh skipped while the hook is down).
func TestHookErrorsHideTheURLQuery(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	u := strings.Replace(srv.URL, "http://", "http://hookuser:h00kpass@", 1) + "/auth?token=h00ktoken"
	srv.Close() // nothing listens there now: connection refused
	h := NewHook(HookConfig{URL: u, Timeout: patience})
	_, err := hookAuth(h, "k")
	if !errors.Is(err, keystore.ErrUnavailable) {
		t.Fatalf("hook down: %v, want unavailable", err)
	}
	if strings.Contains(err.Error(), "h00k") {
		t.Fatalf("error shows the hook's credentials: %v", err)
	}
	if !strings.Contains(err.Error(), "/auth") {
		t.Fatalf("error does not say which hook: %v", err)
	}
}

// A public key given without its PEM armour — the bare base64 that
// identity providers show (Keycloak's realm "Public key") — or as PEM with
// literal \n (an env file, a compose file) did not decode as PEM and was
// taken as an HMAC secret: anyone holding the public key, which is public,
// could sign HS256 tokens for any sub.
func TestPublicKeyTextIsNeverAnHMACSecret(t *testing.T) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	bare := base64.StdEncoding.EncodeToString(der)
	armoured := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	for name, v := range map[string]string{
		"bare base64":      bare,
		"PEM, literal \\n": strings.ReplaceAll(strings.TrimSpace(armoured), "\n", `\n`),
		"PEM on one line":  strings.ReplaceAll(armoured, "\n", ""),
	} {
		t.Run(name, func(t *testing.T) {
			j, err := NewJWT(JWTConfig{Key: v})
			if err != nil {
				return // refused at start-up: safe
			}
			forged := sign(t, jwt.SigningMethodHS256, []byte(strings.TrimSpace(v)), "", claims("admin", time.Hour))
			if id, err := authenticate(j, forged); err == nil {
				t.Fatalf("a token HMAC-signed with the public key's text was admitted as %q", id.Key)
			}
			// Where the key was understood, its holder's tokens verify.
			if id, err := authenticate(j, sign(t, jwt.SigningMethodRS256, priv, "", claims("alice", time.Hour))); err != nil || id.Key != "alice" {
				t.Fatalf("RS256 token of the key: %+v %v", id, err)
			}
		})
	}
	// A secret made as the README says (32 random bytes, base64) is still one.
	if _, algs, err := ParseKey("q2Xw1Ck0l3v9Yb8Jm6Zt4Rr7Nn5Pp0Ss2Uu4Ww6Yy8A="); err != nil || algs[0] != "HS256" {
		t.Fatalf("a base64 random secret: %v %v", algs, err)
	}
}
