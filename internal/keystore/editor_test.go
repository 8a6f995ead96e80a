package keystore

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

func TestNewKeyIsRandomUUIDForm(t *testing.T) {
	form := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 100 {
		k, err := NewKey()
		if err != nil {
			t.Fatal(err)
		}
		if !form.MatchString(k) || seen[k] {
			t.Fatalf("key %q: wrong form or repeated", k)
		}
		seen[k] = true
	}
}

// TestFileEditorKeepsCommentsAndFeedsTheStore edits a key file that a File
// store reads, as `wspubsub keys` does beside a running gateway.
func TestFileEditorKeepsCommentsAndFeedsTheStore(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keys.txt")
	if err := os.WriteFile(path, []byte("# production keys\nalpha\n\n  beta  \n# end"), 0o640); err != nil {
		t.Fatal(err)
	}
	store, err := NewFile(path)
	if err != nil {
		t.Fatal(err)
	}
	store.interval = 0
	ed := NewFileEditor(path)
	mustEdit := func(op func(context.Context, string) (bool, error), key string, want bool) {
		t.Helper()
		if got, err := op(ctx, key); err != nil || got != want {
			t.Fatalf("%q: got %v, %v; want %v", key, got, err, want)
		}
	}
	mustEdit(ed.Add, "gamma", true)
	mustEdit(ed.Add, "gamma", false)
	mustEdit(ed.Add, "beta", false) // present with spaces around: the store trims lines
	mustEdit(ed.Remove, "alpha", true)
	mustEdit(ed.Remove, "alpha", false)
	data, _ := os.ReadFile(path)
	if want := "# production keys\n\n  beta  \n# end\ngamma\n"; string(data) != want {
		t.Fatalf("file now:\n%q\nwant\n%q", data, want)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Errorf("mode changed to %v", st.Mode().Perm())
	}
	if keys, err := ed.List(ctx); err != nil || !slices.Equal(keys, []string{"beta", "gamma"}) {
		t.Fatalf("List: %v %v", keys, err)
	}
	// The store sees the change at its next check (interval 0 here).
	for key, want := range map[string]bool{"gamma": true, "alpha": false, "beta": true} {
		if got, err := store.Contains(ctx, key); err != nil || got != want {
			t.Errorf("store.Contains(%q) = %v %v", key, got, err)
		}
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

func TestFileEditorCreatesFileAndRefusesBadKeys(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "new.txt")
	ed := NewFileEditor(path)
	if _, err := ed.List(ctx); err == nil {
		t.Fatal("List of a missing file succeeded")
	}
	if removed, err := ed.Remove(ctx, "x"); err == nil || removed {
		t.Fatalf("Remove from a missing file: %v %v", removed, err)
	}
	if added, err := ed.Add(ctx, "first"); err != nil || !added {
		t.Fatalf("Add to a missing file: %v %v", added, err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("created file: %v %v", st, err)
	}
	for _, bad := range []string{"", " x", "a\nb", "#x"} {
		if _, err := ed.Add(ctx, bad); err == nil {
			t.Errorf("Add(%q) accepted", bad)
		}
	}
	// A symbolic link keeps pointing at the edited keys.
	link := filepath.Join(dir, "link.txt")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFileEditor(link).Add(ctx, "second"); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Lstat(link); st.Mode()&os.ModeSymlink == 0 {
		t.Fatal("the link was replaced by a file")
	}
	if data, _ := os.ReadFile(path); string(data) != "first\nsecond\n" {
		t.Fatalf("file: %q", data)
	}
}

func TestMongoEditor(t *testing.T) {
	srv := testenv.Mongo(t)
	ctx := context.Background()
	for _, field := range []string{"_id", "token"} {
		m, err := NewMongo(MongoConfig{URI: srv.URL(), Database: "edit", Collection: field, Field: field, Timeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close(ctx)
		for _, step := range []struct {
			op   func(context.Context, string) (bool, error)
			key  string
			want bool
		}{{m.Add, "k2", true}, {m.Add, "k1", true}, {m.Add, "k1", false}, {m.Remove, "k3", false}, {m.Add, "k3", true}, {m.Remove, "k3", true}} {
			if got, err := step.op(ctx, step.key); err != nil || got != step.want {
				t.Fatalf("%s %s: %v %v, want %v", field, step.key, got, err, step.want)
			}
		}
		if keys, err := m.List(ctx); err != nil || !slices.Equal(keys, []string{"k1", "k2"}) {
			t.Fatalf("%s List: %v %v", field, keys, err)
		}
		if ok, err := m.Contains(ctx, "k1"); err != nil || !ok {
			t.Fatalf("%s: added key not found by the gateway's lookup: %v %v", field, ok, err)
		}
	}
}
