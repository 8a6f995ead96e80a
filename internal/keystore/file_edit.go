package keystore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// FileEditor edits a key file (the File store's format: one key per line,
// # comments, blank lines) in place. Every change is written to a temporary
// file in the same directory and renamed over the original, so a gateway
// re-reading it sees the old or the new file, never half of one; comments,
// blank lines and the order of the other keys are kept.
type FileEditor struct{ path string }

var _ Editor = (*FileEditor)(nil)

// NewFileEditor edits path; Add creates the file (mode 0600: keys are
// secrets) if it does not exist.
func NewFileEditor(path string) *FileEditor { return &FileEditor{path: path} }

// Add implements Editor.
func (e *FileEditor) Add(ctx context.Context, key string) (bool, error) {
	if err := checkFileKey(key); err != nil {
		return false, err
	}
	unlock, err := e.lock(ctx)
	if err != nil {
		return false, err
	}
	defer unlock()
	lines, mode, err := e.read(true)
	if err != nil {
		return false, err
	}
	for _, l := range lines {
		if isKeyLine(l, key) {
			return false, nil
		}
	}
	return true, e.write(append(lines, key), mode)
}

// Remove implements Editor: every line holding key goes.
func (e *FileEditor) Remove(ctx context.Context, key string) (bool, error) {
	unlock, err := e.lock(ctx)
	if err != nil {
		return false, err
	}
	defer unlock()
	lines, mode, err := e.read(false)
	if err != nil {
		return false, err
	}
	kept := lines[:0:0]
	for _, l := range lines {
		if !isKeyLine(l, key) {
			kept = append(kept, l)
		}
	}
	if len(kept) == len(lines) {
		return false, nil
	}
	return true, e.write(kept, mode)
}

// List implements Editor: the keys in file order, each once.
func (e *FileEditor) List(context.Context) ([]string, error) {
	lines, _, err := e.read(false)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var keys []string
	for _, l := range lines {
		k := strings.TrimSpace(l)
		if k == "" || strings.HasPrefix(k, "#") || seen[k] {
			continue
		}
		seen[k] = true
		keys = append(keys, k)
	}
	return keys, nil
}

// lock serializes the read-modify-rename of Add and Remove across
// processes (two `wspubsub keys add` at once would otherwise each rename
// their version over the other's, and one key would be lost): an flock on
// the file's directory.
func (e *FileEditor) lock(ctx context.Context) (func(), error) {
	dir := filepath.Dir(e.path)
	if real, err := filepath.EvalSymlinks(e.path); err == nil {
		dir = filepath.Dir(real) // where write renames
	}
	unlock, err := lockDir(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("locking key file %s: %w", e.path, err)
	}
	return unlock, nil
}

func isKeyLine(line, key string) bool { return strings.TrimSpace(line) == key }

// checkFileKey refuses what the file format cannot hold: the File store
// trims lines and skips blank ones and # comments.
func checkFileKey(key string) error {
	if key == "" || strings.TrimSpace(key) != key || strings.ContainsAny(key, "\r\n") || strings.HasPrefix(key, "#") {
		return fmt.Errorf("a key file cannot hold %q (empty, surrounding spaces, a line break or a leading #)", key)
	}
	return nil
}

// read returns the file's lines and mode; a missing file is empty when
// create is set.
func (e *FileEditor) read(create bool) ([]string, fs.FileMode, error) {
	data, err := os.ReadFile(e.path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && create:
		return nil, 0o600, nil
	case err != nil:
		return nil, 0, fmt.Errorf("reading key file: %w", err)
	}
	st, err := os.Stat(e.path)
	if err != nil {
		return nil, 0, fmt.Errorf("reading key file: %w", err)
	}
	data = bytes.TrimPrefix(data, utf8BOM) // as the gateway reads it
	text := strings.TrimSuffix(string(bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n"))), "\n")
	if text == "" {
		return nil, st.Mode().Perm(), nil
	}
	return strings.Split(text, "\n"), st.Mode().Perm(), nil
}

// write replaces the file atomically: temporary file, fsync, rename. A
// symbolic link is followed so that it keeps pointing at the keys.
func (e *FileEditor) write(lines []string, mode fs.FileMode) error {
	path := e.path
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing key file: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	var buf strings.Builder
	for _, l := range lines {
		buf.WriteString(l)
		buf.WriteByte('\n')
	}
	_, err = tmp.WriteString(buf.String())
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("writing key file %s: %w", path, err)
	}
	return nil
}
