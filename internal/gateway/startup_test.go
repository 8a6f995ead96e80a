package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/keystore"
)

// scriptedStore answers Ping with the errors given, one a call, then nil.
type scriptedStore struct {
	mu   sync.Mutex
	errs []error
}

func (s *scriptedStore) Contains(context.Context, string) (bool, error) { return false, nil }
func (s *scriptedStore) Close(context.Context) error                    { return nil }
func (s *scriptedStore) Ping(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) == 0 {
		return nil
	}
	err := s.errs[0]
	s.errs = s.errs[1:]
	return err
}

// TestCheckStoreSaysEachThingOnce: an unreachable store is said once at
// start-up, again only when the reason changes, and once when it answers.
func TestCheckStoreSaysEachThingOnce(t *testing.T) {
	refused := fmt.Errorf("%w: pinging MongoDB: dial tcp: %w", keystore.ErrUnavailable, syscall.ECONNREFUSED)
	timeout := fmt.Errorf("%w: pinging MongoDB: %w", keystore.ErrUnavailable, context.DeadlineExceeded)
	var buf strings.Builder
	g := &Gateway{
		cfg:   config.Serve{MongoURI: "mongodb://u:secret@db.example:27017/", KeyCheckTimeout: time.Second},
		log:   slog.New(slog.NewTextHandler(&buf, nil)),
		store: &scriptedStore{errs: []error{refused, refused, refused, timeout, timeout, refused}},
	}
	g.checkStore(context.Background(), time.Millisecond) // returns once the store answers
	out := buf.String()
	for _, c := range []struct {
		line string
		n    int
	}{
		{`msg="key store unreachable at start-up; the gateway keeps starting and clients are refused with 1013 (try again later) until it answers" store="MongoDB at mongodb://***@db.example:27017/" reason="key store unreachable: connection refused"`, 1},
		{`msg="key store still unavailable" store="MongoDB at mongodb://***@db.example:27017/" reason="key store unreachable: timed out"`, 1},
		{`msg="key store still unavailable" store="MongoDB at mongodb://***@db.example:27017/" reason="key store unreachable: connection refused"`, 1},
		{`msg="key store reachable"`, 1},
	} {
		if got := strings.Count(out, c.line); got != c.n {
			t.Errorf("%d lines of %s, want %d", got, c.line, c.n)
		}
	}
	if strings.Contains(out, "secret") {
		t.Errorf("credentials logged")
	}
	if t.Failed() {
		t.Log(out)
	}

	// A store that answers at once: nothing said.
	buf.Reset()
	g.store = &scriptedStore{}
	g.checkStore(context.Background(), time.Millisecond)
	if buf.Len() != 0 {
		t.Errorf("a reachable store logged: %s", buf.String())
	}
}
