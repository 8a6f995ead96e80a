package keystore

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// TestReasonMongoUnreachable: a MongoDB at a closed port gives a short
// reason, not the driver's topology description.
func TestReasonMongoUnreachable(t *testing.T) {
	port := testenv.FreePort(t) // nothing listens there
	m, err := NewMongo(MongoConfig{URI: fmt.Sprintf("mongodb://user:s3cret@127.0.0.1:%d/", port), Database: "d", Collection: "c",
		Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	// The refusal is known once the driver's first dial has failed: on a
	// slow machine a ping can time out before that, so timeouts are tried
	// again (a longer Timeout would not help: a ping waits it out whole).
	for deadline := time.Now().Add(time.Minute); ; {
		err = m.Ping(context.Background())
		if err == nil {
			t.Fatal("ping of a closed port succeeded")
		}
		if Reason(err) != "key store unreachable: timed out" || time.Now().After(deadline) {
			break
		}
	}
	if got := Reason(err); got != "key store unreachable: connection refused" {
		t.Fatalf("Reason = %q\n(error: %v)", got, err)
	}
}

func TestReasonFileAndOthers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys")
	f := &File{path: path, interval: time.Second}
	err := f.reload(true)
	if got := Reason(err); got != "key store unavailable: no such file or directory" {
		t.Fatalf("missing file: %q", got)
	}
	if got := Reason(fmt.Errorf("%w: x", context.DeadlineExceeded)); got != "key store unreachable: timed out" {
		t.Fatalf("deadline: %q", got)
	}
	long := fmt.Errorf("%w: server selection error: boom, current topology: { Type: Unknown }", ErrUnavailable)
	if got := Reason(long); strings.Contains(got, "topology") || !strings.HasPrefix(got, "key store unavailable") {
		t.Fatalf("topology kept: %q", got)
	}
	auth := fmt.Errorf("%w: pinging MongoDB: connection() error occurred during connection handshake: auth error: sasl conversation error", ErrUnavailable)
	if got := Reason(auth); got != "key store unavailable: authentication failed (check the user and password)" {
		t.Fatalf("auth: %q", got)
	}
	if Reason(nil) != "" {
		t.Fatal("nil error has a reason")
	}
}

func TestRedactURIExported(t *testing.T) {
	if got := RedactURI("mongodb://user:s3cret@db.example:27017/x"); strings.Contains(got, "s3cret") || !strings.Contains(got, "db.example:27017") {
		t.Fatalf("RedactURI = %q", got)
	}
}
