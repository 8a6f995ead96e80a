package keystore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
)

// Editor changes the keys of a store: `wspubsub keys` uses it so that an
// operator never needs the mongo shell. The gateway only reads (KeyStore).
type Editor interface {
	// Add makes key known; added is false when it already was.
	Add(ctx context.Context, key string) (added bool, err error)
	// Remove forgets key; removed is false when it was not known.
	Remove(ctx context.Context, key string) (removed bool, err error)
	// List returns every key.
	List(ctx context.Context) ([]string, error)
}

// NewKey returns a random key: 128 bits from crypto/rand in the form of a
// UUID (8-4-4-4-12 hex digits), like the demo key.
func NewKey() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generating a key: %w", err)
	}
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}
