// Package keystore answers one question for the gateway: is this client key
// known? It owns the KeyStore interface and its implementations (MongoDB,
// a key file, memory), and the Editor that `wspubsub keys` changes the
// MongoDB and file stores with (the gateway only reads), and the
// Authenticator seam through which the hub admits clients whichever backend
// checks them (auth.go: a KeyStore is adapted with FromStore; tokens and the
// auth hook live in package auth). It must not know
// about connections or the hub, and must never log a whole key (see Redact).
package keystore

import (
	"context"
	"errors"
	"strconv"
)

// KeyStore looks up client keys.
type KeyStore interface {
	// Contains reports whether key is known. A non-nil error means the
	// store could not answer (unreachable, timed out); callers must then
	// neither admit nor revoke.
	Contains(ctx context.Context, key string) (bool, error)
	// Ping reports whether the store is reachable (for readiness).
	Ping(ctx context.Context) error
	// Close releases the store's resources.
	Close(ctx context.Context) error
}

// ErrUnavailable wraps errors of stores that could not be reached.
var ErrUnavailable = errors.New("key store unavailable")

// Redact returns a form of key safe to log: its first four characters and
// its length. Keys are secrets.
func Redact(key string) string {
	const show = 4
	if len(key) <= show*2 {
		return "****(" + strconv.Itoa(len(key)) + ")"
	}
	return key[:show] + "…(" + strconv.Itoa(len(key)) + ")"
}
