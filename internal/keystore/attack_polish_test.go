package keystore

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// A line longer than the scanner's 1 MiB bound (a pasted blob, a binary
// file's run) silently ended the read: every key after it was dropped —
// refused (4401), and, at the next re-check, their live connections closed
// — while `wspubsub keys ls` still listed them.
func TestKeyFileLongLineDoesNotHideLaterKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.txt")
	text := "first-key\n# " + strings.Repeat("x", 2<<20) + "\nlater-key\n"
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := NewFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"first-key", "later-key"} {
		if ok, err := f.Contains(context.Background(), k); !ok || err != nil {
			t.Fatalf("%s: known %v, err %v", k, ok, err)
		}
	}
	listed, err := NewFileEditor(path).List(context.Background())
	if err != nil || len(listed) != 2 {
		t.Fatalf("keys ls: %d keys %v", len(listed), err)
	}
}

// Two `wspubsub keys add` at once (a provisioning script run in parallel)
// each read the file, added their key and renamed their version over it:
// the last rename won and the other key was lost, though its command had
// printed it and exited 0.
func TestConcurrentKeyFileEditsLoseNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.txt")
	const n = 24
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			// Each its own editor, as separate processes would be.
			if _, err := NewFileEditor(path).Add(context.Background(), "key-"+strconv.Itoa(i)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	keys, err := NewFileEditor(path).List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != n {
		t.Fatalf("%d keys in the file after %d concurrent adds: %v", len(keys), n, keys)
	}
	// Removals at once, too.
	for i := range n / 2 {
		wg.Go(func() {
			if ok, err := NewFileEditor(path).Remove(context.Background(), "key-"+strconv.Itoa(i)); !ok || err != nil {
				t.Errorf("remove key-%d: %v %v", i, ok, err)
			}
		})
	}
	wg.Wait()
	if keys, _ = NewFileEditor(path).List(context.Background()); len(keys) != n-n/2 {
		t.Fatalf("%d keys left after removing %d of %d: %v", len(keys), n/2, n, keys)
	}
}

// A key file saved by a Windows editor starts with a byte-order mark: it
// became part of the first key, which no client could ever present.
func TestKeyFileByteOrderMark(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.txt")
	if err := os.WriteFile(path, []byte("\ufefffirst-key\r\nsecond-key\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := NewFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := f.Contains(context.Background(), "first-key"); !ok || err != nil {
		t.Fatalf("first key after a BOM: known %v, err %v", ok, err)
	}
	keys, err := NewFileEditor(path).List(context.Background())
	if err != nil || len(keys) != 2 || keys[0] != "first-key" {
		t.Fatalf("keys ls: %q %v", keys, err)
	}
	if ok, err := NewFileEditor(path).Remove(context.Background(), "first-key"); !ok || err != nil {
		t.Fatalf("keys rm of the first key: %v %v", ok, err)
	}
}
