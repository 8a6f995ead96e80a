package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/wspubsub/wspubsub/internal/keystore"
)

// JWKS refresh policy: the set is re-read every JWKSRefresh, and at once
// when a token names a key id it does not hold (a key rotated in), at most
// once per JWKSUnknownKIDEvery so that tokens with made-up kids cannot
// make the gateway hammer the identity provider.
const (
	JWKSRefresh         = 15 * time.Minute
	JWKSUnknownKIDEvery = 10 * time.Second
)

// JWKSConfig configures a JWKS authenticator.
type JWKSConfig struct {
	URL      string
	Audience string
	Issuer   string
	Timeout  time.Duration // one fetch of the set [10s]
	Logger   *slog.Logger
	// Refresh and UnknownKIDEvery override the package's policy (tests).
	Refresh         time.Duration
	UnknownKIDEvery time.Duration
}

// JWKS verifies tokens against the keys of a JSON Web Key Set fetched over
// HTTP, found by the token's kid. Only asymmetric algorithms are accepted.
type JWKS struct {
	kf     keyfunc.Keyfunc
	parser *jwt.Parser
	cancel context.CancelFunc
}

// NewJWKS starts fetching cfg.URL (in the background: a set that cannot
// be fetched yet is retried, and the gateway starts meanwhile).
func NewJWKS(cfg JWKSConfig) (*JWKS, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = JWKSRefresh
	}
	if cfg.UnknownKIDEvery <= 0 {
		cfg.UnknownKIDEvery = JWKSUnknownKIDEvery
	}
	ctx, cancel := context.WithCancel(context.Background())
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.URL}, keyfunc.Override{
		Client:            &http.Client{Timeout: cfg.Timeout},
		HTTPTimeout:       cfg.Timeout,
		RefreshInterval:   cfg.Refresh,
		RefreshUnknownKID: rate.NewLimiter(rate.Every(cfg.UnknownKIDEvery), 1),
		// Bounds the wait for the limiter and also (jwkset reuses the
		// context) the refetch itself: it must leave the fetch its time.
		// An unknown kid whose refetch the limiter would only allow past
		// this bound (or the caller's deadline) is refused at once.
		RateLimitWaitMax: cfg.Timeout,
		RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
			return func(_ context.Context, err error) {
				// The URL may carry credentials (user info, a query token).
				cfg.Logger.Warn("cannot fetch the JWKS; keeping the keys fetched before", "url", RedactURL(u), "err", redactErr(err, u))
			}
		},
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("--jwks-url: %s", redactErr(err, cfg.URL))
	}
	return &JWKS{kf: kf, parser: newParser(asymmetric, cfg.Audience, cfg.Issuer), cancel: cancel}, nil
}

// Authenticate implements keystore.Authenticator. A token refused while
// the set holds no key at all (never fetched) means the identity provider
// cannot be reached: the client is told to try again, not that it is
// unauthorized.
func (j *JWKS) Authenticate(ctx context.Context, c keystore.Credential) (keystore.Identity, error) {
	id, err := verify(j.parser, c.Secret, j.kf.KeyfuncCtx(ctx))
	if err != nil && errors.Is(err, keyfunc.ErrKeyfunc) && j.Ping(ctx) != nil {
		return keystore.Identity{}, fmt.Errorf("%w: no JWKS keys fetched yet", keystore.ErrUnavailable)
	}
	return id, err
}

// Ping implements keystore.Authenticator: ready once keys are held.
func (j *JWKS) Ping(ctx context.Context) error {
	keys, err := j.kf.Storage().KeyReadAll(ctx)
	if err != nil {
		return fmt.Errorf("reading the JWKS keys: %w", err)
	}
	if len(keys) == 0 {
		return fmt.Errorf("%w: no JWKS keys fetched yet", keystore.ErrUnavailable)
	}
	return nil
}

// Close stops the refreshes.
func (j *JWKS) Close(context.Context) error {
	j.cancel()
	return nil
}

// RedactURL is raw without its user info and query, either of which may
// hold a credential: fit for a log line.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	u.User, u.RawQuery, u.ForceQuery = nil, "", false
	return u.String()
}

// redactErr is err's text with the credentials of raw (its user name,
// password and query, which HTTP errors quote) masked.
func redactErr(err error, raw string) string {
	msg := err.Error()
	u, perr := url.Parse(raw)
	if perr != nil {
		return strings.ReplaceAll(msg, raw, "(unparseable URL)")
	}
	var secrets []string
	if u.User != nil {
		secrets = append(secrets, u.User.String())
		if n := u.User.Username(); len(n) >= 3 { // a shorter one would mask letters all over the text
			secrets = append(secrets, n)
		}
		if p, ok := u.User.Password(); ok {
			secrets = append(secrets, p)
		}
	}
	secrets = append(secrets, u.RawQuery)
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
		}
	}
	return msg
}
