package config

import (
	"net/url"
	"strings"
	"time"
)

// Auth is how clients prove who they are when it is not a key looked up in
// a store (--mongo-uri, --keys-file): a JWT (--jwt-key, --jwks-url) or the
// operator's auth hook (--auth-url). At most one of them, and none of them
// with a key store.
type Auth struct {
	JWTKey       string // secret: an HS256 secret, or file:<path> of one or of a PEM public key
	JWKSURL      string
	JWTAudience  string
	JWTIssuer    string
	AuthURL      string
	AuthTimeout  time.Duration // 0: --key-check-timeout
	AuthCacheTTL time.Duration
}

// DefaultAuthCacheTTL is how long an auth hook's admission is reused.
const DefaultAuthCacheTTL = 30 * time.Second

func (c *Serve) authFlags(f *flagSet) {
	f.str(&c.JWTKey, "jwt-key", "", "clients connect with a JWT whose sub is their routing key, verified with this key: an HS256 secret of at least 32 bytes (prefer the environment variable to the command line), or file:<path> of a secret or a PEM public key (RS256/PS256, ES256/384/512, EdDSA by the key's type)")
	f.str(&c.JWKSURL, "jwks-url", "", "clients connect with a JWT verified with the keys of this JSON Web Key Set (by kid; re-read every 15 min and when a token names an unknown kid, at most every 10 s)")
	f.str(&c.JWTAudience, "jwt-audience", "", "with --jwt-key or --jwks-url: the aud a token must carry (empty: not checked)")
	f.str(&c.JWTIssuer, "jwt-issuer", "", "with --jwt-key or --jwks-url: the iss a token must carry (empty: not checked)")
	f.str(&c.AuthURL, "auth-url", "", `ask this URL whether to admit a client: POST {"key","transport","addr","origin"}; 200 admits (JSON {"key":"<routing key>","expires":…} optional), 401/403 refuse (4401), a timeout or another status answers 1013`)
	f.dur(&c.AuthTimeout, "auth-timeout", 0, "with --auth-url: bound on one call of the hook (0: --key-check-timeout)")
	f.dur(&c.AuthCacheTTL, "auth-cache-ttl", DefaultAuthCacheTTL, "with --auth-url: reuse an admission for the same key and origin this long (0: ask every time)")
}

// validateAuth rejects combinations of key sources that make no sense.
func (c *Serve) validateAuth(bad func(format string, a ...any)) {
	var chosen []string
	for _, s := range []struct{ flag, v string }{{"--mongo-uri", c.MongoURI}, {"--keys-file", c.KeysFile},
		{"--jwt-key", c.JWTKey}, {"--jwks-url", c.JWKSURL}, {"--auth-url", c.AuthURL}} {
		if s.v != "" {
			chosen = append(chosen, s.flag)
		}
	}
	tokens := c.JWTKey != "" || c.JWKSURL != "" || c.AuthURL != ""
	if tokens && len(chosen) > 1 {
		bad("choose one way to check clients: %s cannot be combined (see README, \"Which key store to pick\")", strings.Join(chosen, " and "))
	}
	if (c.JWTAudience != "" || c.JWTIssuer != "") && c.JWTKey == "" && c.JWKSURL == "" {
		bad("--jwt-audience and --jwt-issuer need --jwt-key or --jwks-url")
	}
	for flag, v := range map[string]string{"--jwks-url": c.JWKSURL, "--auth-url": c.AuthURL} {
		if v == "" {
			continue
		}
		if u, err := url.Parse(v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			shown, _ := Conceal(strings.TrimPrefix(flag, "--"), v) // not its credentials
			bad("%s must be an http:// or https:// URL: %q", flag, shown)
		}
	}
	if c.AuthTimeout < 0 || c.AuthCacheTTL < 0 {
		bad("--auth-timeout and --auth-cache-ttl must not be negative")
	}
}
