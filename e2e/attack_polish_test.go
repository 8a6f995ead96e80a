package e2e

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"net/url"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestAttackPolishFarFutureToken: a token with exp 9999999999 (the usual
// "never expires", year 2286) overflowed the session's expiry (Unix
// nanoseconds end in 2262) into the past: the connection was admitted,
// then closed at once with 4403 "token expired" — and wspubsub.js answers
// that with a reconnect, a loop. It must live and receive.
func TestAttackPolishFarFutureToken(t *testing.T) {
	s := newTokenStack(t, "--jwt-key", jwtSecret)
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "forever", "exp": 9999999999}).SignedString([]byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	c := mustDial(t, s.url(url.QueryEscape(tok)))
	waitLive(t, s, 1)
	// A refresh frame with the same token is accepted (and changes nothing).
	c.send(`{"token":"` + tok + `"}`)
	c.send("ping")
	c.expect("heartbeat message")
	s.publish(envelope(`{"n":1}`, "forever"))
	c.expect(`{"data":{"n":1}}`)
	c.expectNothing(300 * time.Millisecond) // no 4403 behind it
	if n := s.gw.Hub().Live(); n != 1 {
		t.Fatalf("live connections %d, want 1", n)
	}
}

// TestAttackPolishPublicKeyTextAsHMACSecret: --jwt-key given the bare
// base64 of a public key (Keycloak's realm page shows it so, and serves it
// to anyone at /realms/<realm>) was taken as an HS256 secret: a token
// HMAC-signed with that public text was admitted for any sub. It must be
// read as the RSA key it is: the forgery refused, the real token admitted.
func TestAttackPolishPublicKeyTextAsHMACSecret(t *testing.T) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	public := base64.StdEncoding.EncodeToString(der)
	s := newTokenStack(t, "--jwt-key", public)
	exp := time.Now().Add(time.Hour).Unix()
	forged, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "admin", "exp": exp}).SignedString([]byte(public))
	mustDial(t, s.url(url.QueryEscape(forged))).expectClose(4401)
	genuine, _ := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{"sub": "alice", "exp": exp}).SignedString(priv)
	c := mustDial(t, s.url(url.QueryEscape(genuine)))
	waitLive(t, s, 1)
	s.publish(envelope(`{"n":1}`, "alice"))
	c.expect(`{"data":{"n":1}}`)
}
