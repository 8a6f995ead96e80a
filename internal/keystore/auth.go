package keystore

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Credential is what a client presents to connect: the key of its URL (a
// plain key, a JWT, or whatever an auth hook understands) and where it
// comes from. Secret must never be logged whole (Redact).
type Credential struct {
	Secret    string // the key or token as the client sent it
	Transport string // "websocket", "eventsource", "polling"
	Addr      string // the client's address (per-address limits)
	Origin    string // the browser's Origin header, "" for other clients
}

// Identity is who a credential proves the client to be.
type Identity struct {
	// Key is the routing key: the recipient name in published messages,
	// the key of history, presence, per-key caps and the client rate limit.
	Key string
	// Expires is when the credential stops being valid (a token's exp);
	// the zero time: never. A session still open then is closed with 4403
	// unless it presented a fresh credential first.
	Expires time.Time
}

// Authenticator turns a client's credential into its identity. It is the
// only thing the hub knows of authentication, whichever backend stands
// behind it (a KeyStore, JWT verification, an auth hook).
type Authenticator interface {
	// Authenticate returns the credential's identity; an error wrapping
	// ErrUnauthorized when the credential is refused (unknown key, bad or
	// expired token, a hook's 401/403); any other error when the backend
	// cannot answer (callers must then neither admit nor revoke).
	Authenticate(ctx context.Context, c Credential) (Identity, error)
	// Ping reports whether the backend is reachable (for readiness).
	Ping(ctx context.Context) error
	// Close releases its resources.
	Close(ctx context.Context) error
}

// Revocable is the optional ability of an Authenticator whose identities
// can be withdrawn after admission (a key deleted from a store): the hub
// re-checks connected keys with it every --recheck-interval.
type Revocable interface {
	Contains(ctx context.Context, key string) (bool, error)
}

// ErrUnauthorized wraps the errors of refused credentials.
var ErrUnauthorized = errors.New("unauthorized")

// FromStore makes a KeyStore an Authenticator: the identity of a known
// key is the key itself, without expiry; it stays Revocable.
func FromStore(ks KeyStore) Authenticator { return storeAuth{ks} }

type storeAuth struct{ KeyStore }

func (s storeAuth) Authenticate(ctx context.Context, c Credential) (Identity, error) {
	ok, err := s.Contains(ctx, c.Secret)
	switch {
	case err != nil:
		return Identity{}, err
	case !ok:
		return Identity{}, ErrUnknownKey
	}
	return Identity{Key: c.Secret}, nil
}

// ErrUnknownKey is a store's refusal: the key is not in it.
var ErrUnknownKey = fmt.Errorf("%w: unknown key", ErrUnauthorized)
