package auth

import (
	"context"
	"errors"

	"github.com/wspubsub/wspubsub/internal/keystore"
)

// View shows an Authenticator where a keystore.KeyStore is expected (the
// gateway's readiness, start-up check, status page and shutdown use Ping,
// Close and Kind). It is not a store of keys: Contains always fails, and
// the hub must be given the Authenticator itself (Of).
type View struct {
	keystore.Authenticator
	kind string
}

// AsKeyStore wraps a, named kind ("JWT", "JWKS", "auth hook").
func AsKeyStore(a keystore.Authenticator, kind string) *View { return &View{a, kind} }

// Kind names the backend (the status page shows it).
func (v *View) Kind() string { return v.kind }

// errNotAStore is Contains' answer: tokens and hook answers cannot be
// looked up by routing key.
var errNotAStore = errors.New("not a key store: clients are checked by token or auth hook")

// Contains implements keystore.KeyStore; it always fails.
func (v *View) Contains(context.Context, string) (bool, error) { return false, errNotAStore }

// Of returns the Authenticator behind ks when ks is a View, else nil (the
// hub then adapts ks with keystore.FromStore).
func Of(ks keystore.KeyStore) keystore.Authenticator {
	if v, ok := ks.(*View); ok {
		return v.Authenticator
	}
	return nil
}
