//go:build unix

package keystore

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"syscall"
	"time"
)

// lockDir takes an exclusive flock on dir, waiting (bounded by ctx) while
// another process holds it, and returns its release. Locking the directory
// rather than the key file: the file is replaced by a rename on every edit,
// so a lock on it would not exclude an editor that opened the new one.
func lockDir(ctx context.Context, dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrPermission) {
		// A directory that may be written but not read (mode 0300):
		// edits work there as before, unlocked.
		return func() {}, nil
	}
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = f.Close() }, nil // closing releases the lock
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			_ = f.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}
