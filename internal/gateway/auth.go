package gateway

import (
	"log/slog"
	"net/url"
	"time"

	"github.com/wspubsub/wspubsub/internal/auth"
	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/keystore"
)

// newTokenStore builds the authenticator of --jwt-key, --jwks-url or
// --auth-url (config.Validate allows one), shown as a key store (auth.View).
func newTokenStore(cfg config.Serve, log *slog.Logger) (keystore.KeyStore, error) {
	switch {
	case cfg.JWTKey != "":
		j, err := auth.NewJWT(auth.JWTConfig{Key: cfg.JWTKey, Audience: cfg.JWTAudience, Issuer: cfg.JWTIssuer})
		if err != nil {
			return nil, err
		}
		log.Info("key store: JWT (--jwt-key); the routing key is the token's sub", "audience", cfg.JWTAudience, "issuer", cfg.JWTIssuer)
		return auth.AsKeyStore(j, "JWT"), nil
	case cfg.JWKSURL != "":
		j, err := auth.NewJWKS(auth.JWKSConfig{URL: cfg.JWKSURL, Audience: cfg.JWTAudience, Issuer: cfg.JWTIssuer,
			Timeout: cfg.KeyCheckTimeout, Logger: log})
		if err != nil {
			return nil, err
		}
		log.Info("key store: JWT verified with a JWKS (--jwks-url); the routing key is the token's sub", "url", redactURL(cfg.JWKSURL), "audience", cfg.JWTAudience, "issuer", cfg.JWTIssuer)
		return auth.AsKeyStore(j, "JWKS"), nil
	default:
		log.Info("key store: auth hook (--auth-url)", "url", redactURL(cfg.AuthURL), "timeout", authTimeout(cfg), "cache_ttl", cfg.AuthCacheTTL)
		return auth.AsKeyStore(auth.NewHook(auth.HookConfig{URL: cfg.AuthURL, Timeout: authTimeout(cfg), CacheTTL: cfg.AuthCacheTTL}), "auth hook"), nil
	}
}

// tokenAuth reports whether clients are checked by token or auth hook.
func tokenAuth(cfg config.Serve) bool {
	return cfg.JWTKey != "" || cfg.JWKSURL != "" || cfg.AuthURL != ""
}

// authTimeout is one auth hook call's bound: --auth-timeout, else
// --key-check-timeout.
func authTimeout(cfg config.Serve) time.Duration {
	if cfg.AuthTimeout > 0 {
		return cfg.AuthTimeout
	}
	return cfg.KeyCheckTimeout
}

// admissionTimeout bounds one admission's credential check: the hook's
// own timeout must fit in it.
func admissionTimeout(cfg config.Serve) time.Duration {
	if cfg.AuthURL != "" {
		return max(cfg.KeyCheckTimeout, authTimeout(cfg))
	}
	return cfg.KeyCheckTimeout
}

// redactURL drops a URL's user info and query, which may hold secrets.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	u.User, u.RawQuery = nil, ""
	return u.String()
}
