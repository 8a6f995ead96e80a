package keystore

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"time"
)

// File is a key store backed by a text file with one key per line (blank
// lines and lines starting with # are ignored). The file is re-read when its
// modification time or size changes, checked at most once per interval.
type File struct {
	path     string
	interval time.Duration

	mu      sync.Mutex
	keys    map[string]struct{}
	checked time.Time
	mod     time.Time
	size    int64
	err     error
}

// NewFile loads path; it fails if the file cannot be read.
func NewFile(path string) (*File, error) {
	f := &File{path: path, interval: time.Second}
	if err := f.reload(true); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *File) reload(force bool) error {
	st, err := os.Stat(f.path)
	if err != nil {
		f.err = fmt.Errorf("%w: reading key file: %w", ErrUnavailable, err)
		return f.err
	}
	if !force && st.ModTime().Equal(f.mod) && st.Size() == f.size {
		f.err = nil
		return nil
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		f.err = fmt.Errorf("%w: reading key file: %w", ErrUnavailable, err)
		return f.err
	}
	keys := make(map[string]struct{})
	// A byte-order mark (a file saved by a Windows editor) is not part of
	// the first key.
	data = bytes.TrimPrefix(data, utf8BOM)
	// Every line, however long: a line-length bound would end the read
	// there and silently drop the keys after it.
	for l := range bytes.Lines(data) {
		line := bytes.TrimSpace(l)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		keys[string(line)] = struct{}{}
	}
	f.keys, f.mod, f.size, f.err = keys, st.ModTime(), st.Size(), nil
	return nil
}

// utf8BOM is the UTF-8 byte-order mark some editors put first in a file.
var utf8BOM = []byte("\ufeff")

func (f *File) refresh() error {
	if time.Since(f.checked) < f.interval {
		return f.err
	}
	f.checked = time.Now()
	return f.reload(false)
}

// Len returns how many keys are loaded.
func (f *File) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.keys)
}

// Contains implements KeyStore.
func (f *File) Contains(_ context.Context, key string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.refresh(); err != nil {
		return false, err
	}
	_, ok := f.keys[key]
	return ok, nil
}

// Ping implements KeyStore.
func (f *File) Ping(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refresh()
}

// Close implements KeyStore.
func (f *File) Close(context.Context) error { return nil }
