package config

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestAuthFlagsAndTwins(t *testing.T) {
	c, err := ParseServe([]string{"--jwt-audience", "push"}, env(map[string]string{
		"WSPUBSUB_JWT_KEY": "0123456789abcdef0123456789abcdef", "WSPUBSUB_JWT_ISSUER": "https://id.example",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.JWTKey == "" || c.JWTAudience != "push" || c.JWTIssuer != "https://id.example" || c.Demo() {
		t.Fatalf("got %+v (demo %v)", c.Auth, c.Demo())
	}
	if c.Listen != DefaultListen {
		t.Fatalf("listen %q: a JWT gateway is not in demo mode", c.Listen)
	}
	c, err = ParseServe(nil, env(map[string]string{"WSPUBSUB_AUTH_URL": "http://127.0.0.1:9000/auth", "WSPUBSUB_AUTH_TIMEOUT": "3s"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.AuthURL == "" || c.AuthTimeout != 3*time.Second || c.AuthCacheTTL != DefaultAuthCacheTTL {
		t.Fatalf("got %+v", c.Auth)
	}
}

func TestAuthCombinationsRejected(t *testing.T) {
	cases := map[string][]string{
		"--jwt-key and --auth-url":     {"--jwt-key", "0123456789abcdef0123456789abcdef", "--auth-url", "http://a/auth"},
		"--mongo-uri and --jwks-url":   {"--mongo-uri", "mongodb://db", "--jwks-url", "https://id/jwks.json"},
		"--keys-file and --jwt-key":    {"--keys-file", "keys.txt", "--jwt-key", "0123456789abcdef0123456789abcdef"},
		"--jwt-key and --jwks-url":     {"--jwt-key", "0123456789abcdef0123456789abcdef", "--jwks-url", "https://id/jwks.json"},
		"need --jwt-key or --jwks":     {"--auth-url", "http://a/auth", "--jwt-audience", "push"},
		"must be an http":              {"--auth-url", "ftp://a/auth"},
		"--auth-cache-ttl must not be": {"--auth-url", "http://a/auth", "--auth-cache-ttl", "-1s"},
	}
	for want, args := range cases {
		_, err := ParseServe(args, env(nil), io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: %v, want an error saying %q", args, err, want)
		}
	}
}
