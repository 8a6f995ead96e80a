package hub

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// watcher counts each key's watches; fail makes Watch fail.
type watcher struct {
	mu   sync.Mutex
	refs map[string]int
	fail bool
}

func (w *watcher) Watch(_ context.Context, key string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fail {
		return errors.New("redis down")
	}
	w.refs[key]++
	return nil
}

func (w *watcher) Unwatch(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.refs[key]--
}

func (w *watcher) of(key string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.refs[key]
}

// With per-key routing every admitted session holds one watch of its key,
// taken before it is registered and given back when it leaves or when its
// admission fails after it; a key that cannot be watched is refused with
// 1013.
func TestAdmitWatchesTheKeyWhileTheSessionLives(t *testing.T) {
	w := &watcher{refs: map[string]int{}}
	h := newHub(t, keystore.NewMemory("k"), nil, func(c *Config) { c.Router = w; c.MaxSessionsPerKey = 2 })
	a, err := try(h, "k", "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := try(h, "k", "192.0.2.2")
	if err != nil || w.of("k") != 2 {
		t.Fatalf("two sessions: %v, %d watches", err, w.of("k"))
	}
	// A third is refused by the per-key cap: no watch is kept.
	if _, err := try(h, "k", "192.0.2.3"); code(err) != session.CloseTooMany || w.of("k") != 2 {
		t.Fatalf("over the cap: %v, %d watches", err, w.of("k"))
	}
	h.Leave(a, metrics.DiscClient)
	h.Leave(a, metrics.DiscClient) // twice: one unwatch
	if w.of("k") != 1 {
		t.Fatalf("after a leave: %d watches, want 1", w.of("k"))
	}
	h.Leave(b, metrics.DiscClient)
	if w.of("k") != 0 {
		t.Fatalf("after both left: %d watches", w.of("k"))
	}
	w.fail = true
	if _, err := try(h, "k", "192.0.2.4"); code(err) != session.CloseTryAgain {
		t.Fatalf("watch failing: %v, want 1013", err)
	}
	if got := testutil.ToFloat64(h.m.Rejections.WithLabelValues(metrics.RejectRouting)); got != 1 {
		t.Fatalf("rejections{routing_unavailable} = %v", got)
	}
}
