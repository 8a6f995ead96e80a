package broker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// A gateway with history on says once, at start, when Redis's persistence
// would let a crash lose acknowledged messages silently, or that it could
// not check; with appendonly yes and appendfsync always it says nothing.
func TestRedisPersistenceWarning(t *testing.T) {
	refused := func(t testing.TB) (*testenv.Service, string) {
		srv := testenv.Redis(t)
		admin := redis.NewClient(&redis.Options{Addr: srv.Addr()})
		defer admin.Close()
		if err := admin.Do(context.Background(), "ACL", "SETUSER", "gw", "on", ">secret", "~*", "&*", "+@all", "-config").Err(); err != nil {
			t.Fatal(err)
		}
		return srv, "redis://gw:secret@" + srv.Addr()
	}
	plain := func(start func(testing.TB) *testenv.Service) func(testing.TB) (*testenv.Service, string) {
		return func(t testing.TB) (*testenv.Service, string) { s := start(t); return s, s.URL() }
	}
	for _, c := range []struct {
		name  string
		start func(testing.TB) (*testenv.Service, string)
		want  string // "" for no warning
	}{
		{"RDB only", plain(testenv.Redis), "appendonly no"},
		{"AOF everysec", plain(func(t testing.TB) *testenv.Service { return testenv.RedisWith(t, "--appendonly", "yes") }), "appendfsync everysec"},
		{"AOF always", plain(testenv.DurableRedis), ""},
		{"CONFIG refused", refused, "could not check Redis persistence"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, url := c.start(t)
			var log syncBuffer
			b, err := NewRedis(RedisConfig{URL: url, Inbound: "in", Logger: slog.New(slog.NewTextHandler(&log, nil)),
				History: HistoryConfig{Size: 10, TTL: time.Minute}})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			runBroker(t, b) // the check runs before the broker is ready
			// Reloaded (a Redis restart, a lost function): said once only.
			if err := b.loadHistory(context.Background()); err != nil {
				t.Fatal(err)
			}
			out := log.String()
			n := strings.Count(out, "history: ")
			switch {
			case c.want == "" && n != 0:
				t.Fatalf("a warning with appendfsync always:\n%s", out)
			case c.want != "" && (n != 1 || !strings.Contains(out, c.want) || !strings.Contains(out, "level=WARN")):
				t.Fatalf("want one warning naming %q, got:\n%s", c.want, out)
			case c.want != "" && !strings.Contains(out, "appendonly yes and appendfsync always"):
				t.Fatalf("the warning does not say what is needed:\n%s", out)
			}
		})
	}
}

// Concurrent Records go to Redis together (FCALL wspubsub_publish_batch):
// each call gets its own answer, a refused message fails its call only,
// and an idempotency key repeated within one batch is a duplicate.
func TestRedisRecordBatches(t *testing.T) {
	srv := testenv.Redis(t)
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		History: HistoryConfig{Size: 100, TTL: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := runBroker(t, b)
	ctx := context.Background()

	// One batch, as the queue sends it.
	calls := []*recordCall{
		{msg: []byte(`{"recipients":["b1"],"data":1}`), idem: "x"},
		{msg: []byte(`{"recipients":["b1"]}`)},
		{msg: []byte(`{"recipients":["b1"],"data":"again"}`), idem: "x"},
		{msg: []byte(`{"recipients":["b2","b1"],"data":2}`)},
	}
	b.recordBatch(ctx, calls)
	if c := calls[0]; c.err != nil || c.rec.Duplicate || len(c.rec.IDs) != 1 {
		t.Fatalf("first: %+v %v", c.rec, c.err)
	}
	if c := calls[1]; c.err == nil || !strings.Contains(c.err.Error(), `no "data"`) {
		t.Fatalf("refused: %+v %v", c.rec, c.err)
	}
	if c := calls[2]; c.err != nil || !c.rec.Duplicate || c.rec.IDs[0] != calls[0].rec.IDs[0] {
		t.Fatalf("repeat: %+v %v", c.rec, c.err)
	}
	if c := calls[3]; c.err != nil || len(c.rec.IDs) != 2 {
		t.Fatalf("two recipients: %+v %v", c.rec, c.err)
	}
	for range 2 {
		<-got
	}

	// Many at once: each answered, each recorded and published once.
	const n = 50
	ids := make([]string, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := b.Record(ctx, fmt.Appendf(nil, `{"recipients":["c%d"],"data":%d}`, i%5, i), fmt.Sprint("k", i))
			if err == nil && (r.Duplicate || len(r.IDs) != 1) {
				err = fmt.Errorf("record %d: %+v", i, r)
			}
			if err == nil {
				ids[i] = r.IDs[0]
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	for range n {
		select {
		case m := <-got:
			if seen[m] {
				t.Fatalf("published twice: %s", m)
			}
			seen[m] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d published", len(seen), n)
		}
	}
	held := 0
	for k := range 5 {
		r, err := b.Since(ctx, fmt.Sprint("c", k), "0")
		if err != nil || r.Gap {
			t.Fatalf("c%d: %+v %v", k, r, err)
		}
		held += len(r.Entries)
	}
	if held != n {
		t.Fatalf("%d held, want %d", held, n)
	}
}
