package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wspubsub/wspubsub/internal/keystore"
)

// idp is a fake identity provider serving a JWKS that the test rotates.
type idp struct {
	mu      sync.Mutex
	keys    map[string]ed25519.PrivateKey // kid → key, the set served
	status  int                           // 0: 200
	fetches atomic.Int32
	srv     *httptest.Server
}

func newIDP(t *testing.T, kids ...string) *idp {
	p := &idp{keys: map[string]ed25519.PrivateKey{}}
	for _, k := range kids {
		p.add(k)
	}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *idp) add(kid string) ed25519.PrivateKey {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	p.mu.Lock()
	p.keys[kid] = priv
	p.mu.Unlock()
	return priv
}

func (p *idp) key(kid string) ed25519.PrivateKey {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.keys[kid]
}

func (p *idp) serve(w http.ResponseWriter, _ *http.Request) {
	p.fetches.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status != 0 {
		w.WriteHeader(p.status)
		return
	}
	type jwk struct {
		Kty string `json:"kty"`
		Crv string `json:"crv"`
		X   string `json:"x"`
		Kid string `json:"kid"`
		Alg string `json:"alg"`
		Use string `json:"use"`
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	for kid, k := range p.keys {
		pub := k.Public().(ed25519.PublicKey)
		set.Keys = append(set.Keys, jwk{"OKP", "Ed25519", base64.RawURLEncoding.EncodeToString(pub), kid, "EdDSA", "sig"})
	}
	_ = json.NewEncoder(w).Encode(set)
}

func newJWKS(t *testing.T, p *idp) *JWKS {
	t.Helper()
	j, err := NewJWKS(JWKSConfig{URL: p.srv.URL, Timeout: patience, UnknownKIDEvery: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatalf("NewJWKS: %v", err)
	}
	t.Cleanup(func() { _ = j.Close(context.Background()) })
	return j
}

func TestJWKSVerifiesByKid(t *testing.T) {
	p := newIDP(t, "k1")
	j := newJWKS(t, p)
	if err := j.Ping(context.Background()); err != nil {
		t.Fatalf("Ping after the first fetch: %v", err)
	}
	id, err := authenticate(j, sign(t, jwt.SigningMethodEdDSA, p.key("k1"), "k1", claims("carol", time.Hour)))
	if err != nil || id.Key != "carol" {
		t.Fatalf("good token: %+v %v", id, err)
	}
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	_, err = authenticate(j, sign(t, jwt.SigningMethodEdDSA, other, "k1", claims("carol", time.Hour)))
	wantRefused(t, err, "signed by another key under a known kid")
	_, err = authenticate(j, sign(t, jwt.SigningMethodEdDSA, p.key("k1"), "k1", claims("carol", -time.Second)))
	wantRefused(t, err, "expired")
	_, err = authenticate(j, sign(t, jwt.SigningMethodHS256, []byte(secret), "k1", claims("carol", time.Hour)))
	wantRefused(t, err, "HS256 against a JWKS")
}

func TestJWKSRotation(t *testing.T) {
	p := newIDP(t, "k1")
	j := newJWKS(t, p)
	before := p.fetches.Load()
	// The provider rotates in k2 (and drops k1): the first token naming
	// k2 makes the gateway fetch the set again, once.
	p.mu.Lock()
	delete(p.keys, "k1")
	p.mu.Unlock()
	k2 := expectRotatedIn(t, j, p, before)
	// The known key still verifies.
	if _, err := authenticate(j, sign(t, jwt.SigningMethodEdDSA, k2, "k2", claims("dave", time.Hour))); err != nil {
		t.Fatalf("known key after made-up kids: %v", err)
	}
}

func TestJWKSUnreachable(t *testing.T) {
	p := newIDP(t, "k1")
	p.status = http.StatusInternalServerError
	j := newJWKS(t, p)
	if err := j.Ping(context.Background()); err == nil {
		t.Fatal("Ping succeeded with no keys fetched")
	}
	_, err := authenticate(j, sign(t, jwt.SigningMethodEdDSA, p.key("k1"), "k1", claims("erin", time.Hour)))
	if !errors.Is(err, keystore.ErrUnavailable) || errors.Is(err, keystore.ErrUnauthorized) {
		t.Fatalf("with no keys fetched: %v, want unavailable (try again), not unauthorized", err)
	}
}

// expectRotatedIn adds k2 at the provider: the first token naming it is
// admitted after exactly one fetch since before, and made-up kids neither
// make it fetch again (rate-limited) nor get in.
func expectRotatedIn(t *testing.T, j *JWKS, p *idp, before int32) ed25519.PrivateKey {
	t.Helper()
	k2 := p.add("k2")
	id, err := authenticate(j, sign(t, jwt.SigningMethodEdDSA, k2, "k2", claims("dave", time.Hour)))
	if err != nil || id.Key != "dave" {
		t.Fatalf("token of the rotated-in key: %+v %v", id, err)
	}
	if n := p.fetches.Load() - before; n != 1 {
		t.Fatalf("fetches for the unknown kid: %d, want 1", n)
	}
	for range 5 {
		_, err = authenticate(j, sign(t, jwt.SigningMethodEdDSA, k2, "k-made-up", claims("dave", time.Hour)))
		wantRefused(t, err, "unknown kid")
	}
	if n := p.fetches.Load() - before; n != 1 {
		t.Fatalf("fetches after made-up kids: %d, want still 1", n)
	}
	return k2
}
