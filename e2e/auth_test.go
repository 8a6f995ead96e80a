package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

const jwtSecret = "e2e-secret-0123456789abcdef-0123456789" // ≥ 32 bytes

// newTokenStack starts Redis and a gateway checking clients with args
// (--jwt-key, --auth-url, …): no MongoDB.
func newTokenStack(t *testing.T, args ...string) *stack {
	t.Helper()
	s := &stack{t: t, redis: testenv.Redis(t)}
	s.rdb = redis.NewClient(&redis.Options{Addr: s.redis.Addr()})
	t.Cleanup(func() { s.rdb.Close() })
	base := []string{"--listen", "127.0.0.1:0", "--redis-url", s.redis.URL(), "--shutdown-timeout", "5s", "--log-level", "debug"}
	s.startGateway(append(base, args...))
	return s
}

// hsToken signs a token for sub expiring at exp with jwtSecret.
func hsToken(t *testing.T, sub string, exp time.Time) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": sub, "exp": exp.Unix(), "aud": "push"}).SignedString([]byte(jwtSecret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func secretFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "jwt.secret")
	if err := os.WriteFile(p, []byte(jwtSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return "file:" + p
}

func TestJWTClientReceivesBySub(t *testing.T) {
	s := newTokenStack(t, "--jwt-key", secretFile(t), "--jwt-audience", "push")
	c := mustDial(t, s.url(url.QueryEscape(hsToken(t, "alice", time.Now().Add(time.Hour)))))
	waitLive(t, s, 1)
	s.publish(envelope(`{"n":1}`, "alice"))
	c.expect(`{"data":{"n":1}}`)

	// A token signed with another secret, an expired one, one for another
	// audience: 4401, like a wrong key.
	bad, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix(), "aud": "push"}).
		SignedString([]byte("another-secret-0123456789abcdef-0123"))
	other, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "alice", "exp": time.Now().Add(time.Hour).Unix(), "aud": "other"}).
		SignedString([]byte(jwtSecret))
	for _, tok := range []string{bad, hsToken(t, "alice", time.Now().Add(-time.Minute)), other} {
		mustDial(t, s.url(url.QueryEscape(tok))).expectClose(4401)
	}

	// EventSource with a token: its POSTs reach it by the same URL.
	tok := hsToken(t, "bob", time.Now().Add(time.Hour))
	es := openSSE(t, s.httpClientURL("key="+url.QueryEscape(tok)+"&sid=es1"), nil)
	waitLive(t, s, 2)
	if code, body, _ := post(t, s.httpClientURL("key="+url.QueryEscape(tok)+"&sid=es1"), "ping", nil); code != 200 || body != "heartbeat message" {
		t.Fatalf("POST ping with a token: %d %q", code, body)
	}
	if code, _, _ := post(t, s.httpClientURL("key=bob&sid=es1"), "ping", nil); code != http.StatusUnauthorized {
		t.Fatalf("POST naming the bare sub: %d, want 401", code)
	}
	s.publish(envelope(`{"n":2}`, "bob"))
	if _, data := es.next(); data != `{"data":{"n":2}}` {
		t.Fatalf("EventSource got %q", data)
	}
}

// TestJWTExpiry: a connection is closed with 4403 when its token expires,
// unless it sent a fresh one. Two connections share a token expiring in
// 2 s; one refreshes. The control's 4403 says the expiry has been
// processed (both are due at the same instant, in one pass), so the
// refreshed one's message afterwards proves it was kept — no assertion
// on how long anything took.
func TestJWTExpiry(t *testing.T) {
	s := newTokenStack(t, "--jwt-key", jwtSecret)
	exp := time.Now().Add(3 * time.Second)
	first := hsToken(t, "carol", exp)
	// A machine slower than the first token's life fails any step before
	// the refresh through no fault of the gateway: nothing to conclude then.
	expired := func() bool { return time.Now().Unix() >= exp.Unix() }
	skipIfExpired := func(what string) {
		t.Helper()
		if expired() {
			t.Skipf("this machine took longer than the first token's life to %s; nothing to conclude", what)
		}
	}
	control := mustDial(t, s.url(first))
	kept := mustDial(t, s.url(first))
	eventually(t, 5*time.Second, "2 live connections (or the token's expiry)", func() bool { return s.gw.Hub().Live() == 2 || expired() })
	skipIfExpired("connect")
	kept.send(`{"token":"` + hsToken(t, "carol", time.Now().Add(time.Hour)) + `"}`)
	// Frames are handled in order: the ping's answer means the refresh was.
	kept.send("ping")
	if got, err := kept.next(patience); err != nil || got != "heartbeat message" {
		skipIfExpired("refresh")
		t.Fatalf("after the refresh and a ping: %q %v, want the heartbeat message", got, err)
	}
	skipIfExpired("connect and refresh")
	control.expectClose(4403)
	s.publish(envelope(`{"after":"expiry"}`, "carol"))
	kept.expect(`{"data":{"after":"expiry"}}`)

	// A refresh naming another sub closes with 4403 at once.
	kept.send(`{"token":"` + hsToken(t, "mallory", time.Now().Add(time.Hour)) + `"}`)
	kept.expectClose(4403)
}

// TestAuthHookRoutingKey: the hook admits an opaque credential under the
// routing key it names; the gateway sends it what it needs to decide.
func TestAuthHookRoutingKey(t *testing.T) {
	var mu sync.Mutex
	var asked []map[string]string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req map[string]string
		_ = json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		asked = append(asked, req)
		mu.Unlock()
		switch req["key"] {
		case "session-cookie-1":
			_, _ = w.Write([]byte(`{"key":"user-42"}`))
		case "broken":
			w.WriteHeader(http.StatusBadGateway)
		default:
			w.WriteHeader(http.StatusForbidden)
		}
	}))
	t.Cleanup(hook.Close)
	s := newTokenStack(t, "--auth-url", hook.URL, "--auth-cache-ttl", "0")
	c := mustDial(t, s.url("session-cookie-1"))
	waitLive(t, s, 1)
	// Published in this order on one channel: the first message the client
	// gets is its routing key's, so the credential's never reached it.
	s.publish(envelope(`"for the credential"`, "session-cookie-1"))
	s.publish(envelope(`"for user 42"`, "user-42"))
	c.expect(`{"data":"for user 42"}`)

	mustDial(t, s.url("stolen")).expectClose(4401)
	mustDial(t, s.url("broken")).expectClose(1013)
	mu.Lock()
	defer mu.Unlock()
	if got := asked[0]; got["key"] != "session-cookie-1" || got["transport"] != "websocket" || got["addr"] != "127.0.0.1" {
		t.Fatalf("the hook was asked %v", got)
	}
}

// TestBinaryJWT runs the binary with the secret in WSPUBSUB_JWT_KEY (off
// the command line), connects with a token, publishes to its sub with
// `wspubsub publish`, and checks that neither secret nor token is logged.
func TestBinaryJWT(t *testing.T) {
	bin := binary(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cmd := exec.Command(bin, "serve", "--listen", addr)
	cmd.Env = append(os.Environ(), "WSPUBSUB_JWT_KEY="+jwtSecret)
	var logs lockedBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	waitReadyAt(t, addr)
	tok := hsToken(t, "dora", time.Now().Add(time.Hour))
	c := mustDial(t, "ws://"+addr+"/websocket?"+tok)
	c.send("ping") // answered once admitted
	c.expect("heartbeat message")
	out, err := exec.Command(bin, "publish", "--gateway", "http://"+addr, "--to", "dora", `{"via":"binary"}`).CombinedOutput()
	if err != nil {
		t.Fatalf("wspubsub publish: %v\n%s", err, out)
	}
	c.expect(`{"data":{"via":"binary"}}`)
	mustDial(t, "ws://"+addr+"/websocket?"+tok[:len(tok)-2]+"xx").expectClose(4401)
	if l := logs.String(); !strings.Contains(l, "key store: JWT") || strings.Contains(l, jwtSecret) || strings.Contains(l, tok[:20]) {
		t.Fatalf("start-up log does not name the JWT store, or logs the secret or the token:\n%s", l)
	}
}

// TestBinaryAuthFlagConflicts: two ways of checking clients at once is a
// configuration error, said clearly, before anything starts.
func TestBinaryAuthFlagConflicts(t *testing.T) {
	for _, args := range [][]string{
		{"--jwt-key", jwtSecret, "--auth-url", "http://127.0.0.1:1/auth"},
		{"--mongo-uri", "mongodb://127.0.0.1:1", "--jwks-url", "http://127.0.0.1:1/jwks.json"},
	} {
		out, err := exec.Command(binary(t), append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "choose one way to check clients") {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}
	// A key the gateway cannot use is a usage error (exit 2), and
	// `wspubsub config`, the check before a deploy, finds it too.
	for _, cmd := range []string{"serve", "config"} {
		out, err := exec.Command(binary(t), cmd, "--listen", "127.0.0.1:0", "--jwt-key", "short").CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "at least 32 bytes") {
			t.Errorf("%s with a short --jwt-key: %v\n%s", cmd, err, out)
		}
	}
}

// TestJWKSRotationThroughTheGateway: the gateway verifies with the keys
// of a JWKS; a key rotated in at the provider is fetched on the first
// token naming its kid, and a client with it receives its messages.
func TestJWKSRotationThroughTheGateway(t *testing.T) {
	var mu sync.Mutex
	keys := map[string]ed25519.PrivateKey{}
	addKey := func(kid string) ed25519.PrivateKey {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		mu.Lock()
		keys[kid] = priv
		mu.Unlock()
		return priv
	}
	k1 := addKey("k1")
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		var set []map[string]string
		for kid, k := range keys {
			set = append(set, map[string]string{"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "use": "sig",
				"x": base64.RawURLEncoding.EncodeToString(k.Public().(ed25519.PublicKey))})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": set})
	}))
	t.Cleanup(idp.Close)
	s := newTokenStack(t, "--jwks-url", idp.URL, "--jwt-issuer", "https://id.example")
	signed := func(key ed25519.PrivateKey, kid, sub string) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"sub": sub, "iss": "https://id.example", "exp": time.Now().Add(time.Hour).Unix()})
		tok.Header["kid"] = kid
		out, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	c1 := mustDial(t, s.url(signed(k1, "k1", "erin")))
	k2 := addKey("k2")
	c2 := mustDial(t, s.url(signed(k2, "k2", "frank")))
	waitLive(t, s, 2)
	s.publish(envelope(`"to both"`, "erin", "frank"))
	c1.expect(`{"data":"to both"}`)
	c2.expect(`{"data":"to both"}`)
	// An HS256 token is never accepted from a JWKS gateway.
	mustDial(t, s.url(hsToken(t, "erin", time.Now().Add(time.Hour)))).expectClose(4401)
}
