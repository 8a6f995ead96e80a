package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wspubsub/wspubsub/internal/keystore"
)

// HookConfig configures the auth hook.
type HookConfig struct {
	URL      string
	Timeout  time.Duration // one call [2s]
	CacheTTL time.Duration // how long an admission is remembered (0: not at all)
	// CacheSize bounds the remembered admissions [DefaultHookCacheSize].
	CacheSize int
	Client    *http.Client // [a client with Timeout]
}

// DefaultHookCacheSize bounds the hook's cache: about 100 bytes an entry.
const DefaultHookCacheSize = 100_000

// maxHookAnswer bounds the body of a hook's answer that is read.
const maxHookAnswer = 64 << 10

// Hook asks the operator's backend whether to admit a client: it POSTs
// {"key","transport","addr","origin"} as JSON to the URL. 200 admits; its
// body may be JSON naming the routing key ({"key":"user-42"}, else the
// credential is the key) and when the admission ends ("expires": RFC 3339
// or Unix seconds). 401 and 403 refuse. A timeout, a failed request or any
// other status means the backend cannot answer (the client is told to try
// again). Admissions are cached for CacheTTL, by a digest of the
// credential and the origin (never the credential itself).
type Hook struct {
	cfg    HookConfig
	mu     sync.Mutex
	cached map[[sha256.Size]byte]hookEntry
}

type hookEntry struct {
	id    keystore.Identity
	until time.Time
}

// HookRequest is the JSON body POSTed to the hook.
type HookRequest struct {
	Key       string `json:"key"`
	Transport string `json:"transport"`
	Addr      string `json:"addr"`
	Origin    string `json:"origin"`
}

// hookAnswer is the JSON a 200 may carry.
type hookAnswer struct {
	Key     string          `json:"key"`
	Expires json.RawMessage `json:"expires"`
}

// NewHook returns the hook authenticator.
func NewHook(cfg HookConfig) *Hook {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = DefaultHookCacheSize
	}
	if cfg.Client == nil {
		// Its own transport: every admission is one call, so keep enough
		// idle connections for a connect storm (the default keeps 2 per
		// host), and no proxy from the environment — the request carries
		// the client's credential, and the hook is the operator's own
		// service.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = nil
		tr.MaxIdleConnsPerHost = 64
		cfg.Client = &http.Client{Timeout: cfg.Timeout, Transport: tr,
			// A redirect is an answer like any status but 200, 401 and
			// 403 (1013), not a place to POST the client's credential to.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return &Hook{cfg: cfg, cached: map[[sha256.Size]byte]hookEntry{}}
}

// Authenticate implements keystore.Authenticator.
func (h *Hook) Authenticate(ctx context.Context, c keystore.Credential) (keystore.Identity, error) {
	digest := sha256.Sum256([]byte(c.Secret + "\x00" + c.Origin))
	now := time.Now()
	if id, ok := h.lookup(digest, now); ok {
		return id, nil
	}
	id, err := h.ask(ctx, c)
	if err != nil {
		return id, err
	}
	h.remember(digest, id, now)
	return id, nil
}

func (h *Hook) lookup(d [sha256.Size]byte, now time.Time) (keystore.Identity, bool) {
	if h.cfg.CacheTTL <= 0 {
		return keystore.Identity{}, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.cached[d]
	if !ok || !now.Before(e.until) {
		delete(h.cached, d)
		return keystore.Identity{}, false
	}
	return e.id, true
}

// remember caches an admission for CacheTTL, or until it expires if that
// is sooner. When the cache is full, expired entries go, then (if still
// full) arbitrary ones: the cache only saves calls.
func (h *Hook) remember(d [sha256.Size]byte, id keystore.Identity, now time.Time) {
	if h.cfg.CacheTTL <= 0 {
		return
	}
	until := now.Add(h.cfg.CacheTTL)
	if !id.Expires.IsZero() && id.Expires.Before(until) {
		until = id.Expires
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.cached) >= h.cfg.CacheSize {
		// One sweep frees an eighth of the cache at least, so that a full
		// cache of live entries costs one sweep per CacheSize/8 admissions,
		// not a walk of the whole map under the lock for every one.
		for k, e := range h.cached {
			if !now.Before(e.until) {
				delete(h.cached, k)
			}
		}
		keep := h.cfg.CacheSize - max(1, h.cfg.CacheSize/8)
		for k := range h.cached {
			if len(h.cached) <= keep {
				break
			}
			delete(h.cached, k)
		}
	}
	h.cached[d] = hookEntry{id, until}
}

// ask calls the hook.
func (h *Hook) ask(ctx context.Context, c keystore.Credential) (keystore.Identity, error) {
	body, _ := json.Marshal(HookRequest{Key: c.Secret, Transport: c.Transport, Addr: c.Addr, Origin: c.Origin})
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return keystore.Identity{}, fmt.Errorf("%w: building the auth hook request: %w", keystore.ErrUnavailable, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.cfg.Client.Do(req)
	if err != nil {
		// The URL error quotes the hook's URL with its query, which may
		// hold a credential: named here without it.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return keystore.Identity{}, fmt.Errorf("%w: calling the auth hook %s: %w", keystore.ErrUnavailable, RedactURL(h.cfg.URL), err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxHookAnswer))
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return keystore.Identity{}, fmt.Errorf("%w: the auth hook answered %d", keystore.ErrUnauthorized, resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		return keystore.Identity{}, fmt.Errorf("%w: the auth hook answered %d", keystore.ErrUnavailable, resp.StatusCode)
	case err != nil:
		return keystore.Identity{}, fmt.Errorf("%w: reading the auth hook's answer: %w", keystore.ErrUnavailable, err)
	}
	return parseAnswer(raw, c.Secret)
}

// parseAnswer reads a 200's body: empty, or JSON {"key","expires"}.
func parseAnswer(raw []byte, credential string) (keystore.Identity, error) {
	id := keystore.Identity{Key: credential}
	if len(bytes.TrimSpace(raw)) == 0 {
		return id, nil
	}
	var a hookAnswer
	if err := json.Unmarshal(raw, &a); err != nil {
		return keystore.Identity{}, fmt.Errorf("%w: the auth hook's 200 answer is not JSON {\"key\",\"expires\"}: %w", keystore.ErrUnavailable, err)
	}
	if a.Key != "" {
		id.Key = a.Key
	}
	exp, err := parseExpires(a.Expires)
	if err != nil {
		return keystore.Identity{}, fmt.Errorf("%w: the auth hook's \"expires\": %w", keystore.ErrUnavailable, err)
	}
	id.Expires = exp
	return id, nil
}

// parseExpires reads "expires": absent or null (never), Unix seconds, or
// an RFC 3339 time.
func parseExpires(raw json.RawMessage) (time.Time, error) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return time.Time{}, nil
	}
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		if n > MaxExpirySeconds {
			// Unix milliseconds (JavaScript's Date.now()) taken as
			// seconds would never expire.
			return time.Time{}, fmt.Errorf("%v is past the year 9999: want Unix seconds, not milliseconds", n)
		}
		sec := int64(n)
		return time.Unix(sec, int64((n-float64(sec))*1e9)), nil
	}
	var t string
	if err := json.Unmarshal(raw, &t); err != nil {
		return time.Time{}, errors.New("want Unix seconds or an RFC 3339 string")
	}
	return time.Parse(time.RFC3339, t)
}

// MaxExpirySeconds is the latest expiry accepted, 9999-12-31T23:59:59Z in
// Unix seconds: a later one is a time in milliseconds read as seconds.
const MaxExpirySeconds = 253402300799

// Ping implements keystore.Authenticator. The hook is not probed (a probe
// would need a credential); its failures show in the rejections metric
// (store_unavailable).
func (h *Hook) Ping(context.Context) error { return nil }

// Close implements keystore.Authenticator.
func (h *Hook) Close(context.Context) error {
	h.cfg.Client.CloseIdleConnections()
	return nil
}
