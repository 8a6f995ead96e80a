//go:build !unix

package keystore

import "context"

// lockDir does nothing where flock is not available: concurrent edits of
// one key file are then the operator's to avoid.
func lockDir(context.Context, string) (func(), error) { return func() {}, nil }
