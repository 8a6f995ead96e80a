package broker

import (
	"context"
	"log/slog"
	"strings"
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
