package keystore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFileReReadsOnChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, []byte("# comment\nalpha\n\n  beta  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := NewFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f.interval = 0
	ctx := context.Background()
	for key, want := range map[string]bool{"alpha": true, "beta": true, "# comment": false, "gamma": false} {
		if got, err := f.Contains(ctx, key); err != nil || got != want {
			t.Errorf("%q: %v %v", key, got, err)
		}
	}
	time.Sleep(10 * time.Millisecond)
	if err := os.WriteFile(path, []byte("gamma\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, _ := f.Contains(ctx, "gamma"); !ok {
		t.Fatal("new key not picked up")
	}
	if ok, _ := f.Contains(ctx, "alpha"); ok {
		t.Fatal("removed key still known")
	}
	_ = os.Remove(path)
	if _, err := f.Contains(ctx, "gamma"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := NewFile(path); err == nil {
		t.Fatal("NewFile on a missing file succeeded")
	}
}

func TestRedactNeverShowsWholeKey(t *testing.T) {
	for _, k := range []string{"00721b2a-046c-4ecc-a5df-5f808cc6c58f", "short", "", "123456789"} {
		r := Redact(k)
		if k != "" && strings.Contains(r, k) {
			t.Errorf("Redact(%q) = %q", k, r)
		}
	}
	if got := Redact("00721b2a-046c-4ecc-a5df-5f808cc6c58f"); got != "0072…(36)" {
		t.Errorf("got %q", got)
	}
}

func TestRedactURI(t *testing.T) {
	if got := redactURI("mongodb://user:secret@host:27017/db"); got != "mongodb://***@host:27017/db" {
		t.Fatal(got)
	}
}
