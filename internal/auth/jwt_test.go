package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wspubsub/wspubsub/internal/keystore"
)

const secret = "0123456789abcdef0123456789abcdef" // 32 bytes

// sign makes a token of claims signed with key by method; kid is set when
// not empty.
func sign(t testing.TB, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("signing: %v", err)
	}
	return s
}

func claims(sub string, exp time.Duration) jwt.MapClaims {
	return jwt.MapClaims{"sub": sub, "exp": time.Now().Add(exp).Unix()}
}

// pemFile writes pub as a PKIX PEM file and returns "file:<path>".
func pemFile(t *testing.T, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return "file:" + path
}

func authenticate(a keystore.Authenticator, token string) (keystore.Identity, error) {
	return a.Authenticate(context.Background(), keystore.Credential{Secret: token, Transport: "websocket", Addr: "192.0.2.1"})
}

func mustJWT(t *testing.T, cfg JWTConfig) *JWT {
	t.Helper()
	j, err := NewJWT(cfg)
	if err != nil {
		t.Fatalf("NewJWT: %v", err)
	}
	return j
}

func wantRefused(t *testing.T, err error, why string) {
	t.Helper()
	if !errors.Is(err, keystore.ErrUnauthorized) {
		t.Fatalf("%s: got %v, want a refusal (ErrUnauthorized)", why, err)
	}
	if strings.Contains(err.Error(), "eyJ") {
		t.Fatalf("%s: the error quotes the token: %v", why, err)
	}
}

func TestJWTHS256(t *testing.T) {
	j := mustJWT(t, JWTConfig{Key: secret})
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	id, err := authenticate(j, sign(t, jwt.SigningMethodHS256, []byte(secret), "", jwt.MapClaims{"sub": "alice", "exp": exp.Unix()}))
	if err != nil {
		t.Fatalf("good token refused: %v", err)
	}
	if id.Key != "alice" || !id.Expires.Equal(exp) {
		t.Fatalf("identity %+v, want alice until %v", id, exp)
	}
	cases := map[string]string{
		"expired":        sign(t, jwt.SigningMethodHS256, []byte(secret), "", claims("alice", -time.Second)),
		"no exp":         sign(t, jwt.SigningMethodHS256, []byte(secret), "", jwt.MapClaims{"sub": "alice"}),
		"no sub":         sign(t, jwt.SigningMethodHS256, []byte(secret), "", jwt.MapClaims{"exp": time.Now().Add(time.Hour).Unix()}),
		"bad signature":  sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("x", 32)), "", claims("alice", time.Hour)),
		"alg none":       sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", claims("alice", time.Hour)),
		"not a token":    "00721b2a-046c-4ecc-a5df-5f808cc6c58f",
		"tampered claim": tamper(sign(t, jwt.SigningMethodHS256, []byte(secret), "", claims("alice", time.Hour))),
	}
	for why, tok := range cases {
		_, err := authenticate(j, tok)
		wantRefused(t, err, why)
	}
}

// tamper replaces a token's payload with one naming another sub.
func tamper(tok string) string {
	parts := strings.Split(tok, ".")
	payload, _ := jwt.NewParser().DecodeSegment(parts[1])
	evil := strings.Replace(string(payload), "alice", "mallory", 1)
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(evil))
	return strings.Join(parts, ".")
}

func TestJWTAudienceIssuer(t *testing.T) {
	j := mustJWT(t, JWTConfig{Key: secret, Audience: "push", Issuer: "https://id.example"})
	good := jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix(), "aud": []string{"other", "push"}, "iss": "https://id.example"}
	if _, err := authenticate(j, sign(t, jwt.SigningMethodHS256, []byte(secret), "", good)); err != nil {
		t.Fatalf("good token refused: %v", err)
	}
	for why, mod := range map[string]func(jwt.MapClaims){
		"wrong aud": func(c jwt.MapClaims) { c["aud"] = "other" },
		"no aud":    func(c jwt.MapClaims) { delete(c, "aud") },
		"wrong iss": func(c jwt.MapClaims) { c["iss"] = "https://evil.example" },
		"no iss":    func(c jwt.MapClaims) { delete(c, "iss") },
	} {
		c := jwt.MapClaims{}
		for k, v := range good {
			c[k] = v
		}
		mod(c)
		_, err := authenticate(j, sign(t, jwt.SigningMethodHS256, []byte(secret), "", c))
		wantRefused(t, err, why)
	}
}

func TestJWTPublicKeys(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, edKey, _ := ed25519.GenerateKey(rand.Reader)
	cases := []struct {
		name   string
		pub    any
		method jwt.SigningMethod
		priv   any
	}{
		{"RS256", &rsaKey.PublicKey, jwt.SigningMethodRS256, rsaKey},
		{"PS256", &rsaKey.PublicKey, jwt.SigningMethodPS256, rsaKey},
		{"ES256", &ecKey.PublicKey, jwt.SigningMethodES256, ecKey},
		{"EdDSA", edPub, jwt.SigningMethodEdDSA, edKey},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			j := mustJWT(t, JWTConfig{Key: pemFile(t, c.pub)})
			id, err := authenticate(j, sign(t, c.method, c.priv, "", claims("bob", time.Hour)))
			if err != nil || id.Key != "bob" {
				t.Fatalf("good %s token: %+v, %v", c.name, id, err)
			}
			_, err = authenticate(j, sign(t, c.method, c.priv, "", claims("bob", -time.Minute)))
			wantRefused(t, err, "expired")
		})
	}
	// HS/RS confusion: a token signed with HS256 using the public key's
	// PEM bytes as the secret must not pass an RSA key.
	keyArg := pemFile(t, &rsaKey.PublicKey)
	pemBytes, _ := os.ReadFile(strings.TrimPrefix(keyArg, "file:"))
	j := mustJWT(t, JWTConfig{Key: keyArg})
	_, err := authenticate(j, sign(t, jwt.SigningMethodHS256, pemBytes, "", claims("bob", time.Hour)))
	wantRefused(t, err, "HS256 token against an RSA key")
	// An ES256 key does not take an RS256 token, nor ES384.
	j = mustJWT(t, JWTConfig{Key: pemFile(t, &ecKey.PublicKey)})
	_, err = authenticate(j, sign(t, jwt.SigningMethodRS256, rsaKey, "", claims("bob", time.Hour)))
	wantRefused(t, err, "RS256 token against an EC key")
	// An HMAC secret does not take an asymmetric algorithm.
	j = mustJWT(t, JWTConfig{Key: secret})
	_, err = authenticate(j, sign(t, jwt.SigningMethodRS256, rsaKey, "", claims("bob", time.Hour)))
	wantRefused(t, err, "RS256 token against an HMAC secret")
}

func TestParseKeyErrors(t *testing.T) {
	dir := t.TempDir()
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(priv)
	privPath := filepath.Join(dir, "priv.pem")
	_ = os.WriteFile(privPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	secretPath := filepath.Join(dir, "secret")
	_ = os.WriteFile(secretPath, []byte(secret+"\n"), 0o600)
	for v, want := range map[string]string{
		"short":                      "at least 32 bytes",
		"file:" + privPath:           "not a public key",
		"file:" + dir + "/missing":   "reading the key file",
		"file:" + secretPath + ".no": "reading the key file",
	} {
		if _, _, err := ParseKey(v); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseKey(%q) = %v, want an error saying %q", v, err, want)
		}
	}
	key, algs, err := ParseKey("file:" + secretPath)
	if err != nil || string(key.([]byte)) != secret || algs[0] != "HS256" {
		t.Fatalf("secret file: %v %v %v", key, algs, err)
	}
}
