package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/envelope"
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
		case <-time.After(patience):
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

// startHistory runs a Redis broker with history on a fresh Redis, and a
// plain client of that Redis.
func startHistory(t *testing.T) (*Redis, <-chan string, *redis.Client) {
	t.Helper()
	srv := testenv.Redis(t)
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		History: HistoryConfig{Size: 10, TTL: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	got := runBroker(t, b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { rdb.Close() })
	return b, got, rdb
}

// nextPublished returns the next message the broker received: after calls
// that must publish nothing, a last good call's message comes first.
func nextPublished(t *testing.T, got <-chan string) string {
	t.Helper()
	select {
	case m := <-got:
		return m
	case <-time.After(patience):
		t.Fatal("nothing published")
		return ""
	}
}

// The history functions refuse what the gateway's parser refuses for the
// same reason: a top-level member name spelt with an escape (cjson decodes
// it, the parser does not: "recipi\u0065nts" would record in c's history a
// message the gateway routes to a) and a lone surrogate in a recipient.
// Escapes elsewhere, and a surrogate pair, pass: both read them alike.
func TestRedisHistoryRefusesEscapedNames(t *testing.T) {
	b, got, rdb := startHistory(t)
	ctx := context.Background()
	for _, msg := range []string{
		`{"recipients":["a"],"recipi\u0065nts":["c"],"data":1}`,
		`{"recipi\u0065nts":["c"],"recipients":["a"],"data":1}`,
		`{"recipients":["a"],"wspubsub_id\u0073":["x"],"data":1}`,
		`{"recipients":["a"],"d\u0061ta":1,"data":2}`,
		`{"recipients":["a","b\ud800"],"data":1}`,
		`{"recipients":["\udc00"],"data":1}`,
	} {
		err := rdb.FCall(ctx, "wspubsub_publish", nil, msg, "").Err()
		if err == nil || !strings.Contains(err.Error(), "wspubsub: ") {
			t.Fatalf("%s: %v, want an error reply", msg, err)
		}
		res, err := rdb.FCall(ctx, "wspubsub_publish_batch", nil, msg, "", `{"recipients":["ok"],"data":1}`, "").Slice()
		if err != nil || len(res) != 2 {
			t.Fatalf("batch with %s: %v %v", msg, res, err)
		}
		if _, ok := res[0].(error); !ok {
			t.Fatalf("batch with %s: %#v, want an error in its place", msg, res[0])
		}
		if _, ok := res[1].([]any); !ok {
			t.Fatalf("batch with %s: the next message's answer %#v", msg, res[1])
		}
		if m := nextPublished(t, got); !strings.Contains(m, `"recipients":["ok"]`) {
			t.Fatalf("%s published: %s", msg, m)
		}
		var p envelope.Parser
		if _, err := p.Parse([]byte(msg)); err == nil {
			t.Fatalf("%s: the gateway's parser accepts it", msg)
		}
		if _, err := b.Record(ctx, []byte(msg), ""); err == nil {
			t.Fatalf("%s: Record accepted it", msg)
		}
	}
	if n, err := rdb.Exists(ctx, StreamKey("a"), StreamKey("c"), StreamKey("b\uFFFD"), metaKey("a"), metaKey("c")).Result(); err != nil || n != 0 {
		t.Fatalf("%d history keys written by refused messages (%v)", n, err)
	}

	// Passing: the gateway routes to the key the history recorded.
	for _, c := range []struct{ msg, key string }{
		{`{"recipients":["\ud83d\ude00"],"data":1}`, "😀"},
		{`{"recipients":["\u0061b"],"data":{"n\u0061me":"\u00e9\\"}}`, "ab"},
		{`{"recipients":["x\\ud800"],"data":1}`, `x\ud800`},
	} {
		if err := rdb.FCall(ctx, "wspubsub_publish", nil, c.msg, "").Err(); err != nil {
			t.Fatalf("%s: %v", c.msg, err)
		}
		var p envelope.Parser
		env, err := p.ParseRecorded([]byte(nextPublished(t, got)))
		if err != nil || len(env.Recipients) != 1 || string(env.Recipients[0]) != c.key {
			t.Fatalf("%s: routed to %q (%v), want %q", c.msg, env.Recipients, err, c.key)
		}
		if r, err := b.Since(ctx, c.key, "0"); err != nil || len(r.Entries) != 1 {
			t.Fatalf("%s: history of %q: %+v %v", c.msg, c.key, r, err)
		}
	}
}

// A key of another type where a history stream or meta record goes
// (WRONGTYPE) fails the messages for it, each in its place: the batch's
// other messages are recorded and published all the same.
func TestRedisHistoryBatchWrongType(t *testing.T) {
	b, got, rdb := startHistory(t)
	ctx := context.Background()
	if err := rdb.Set(ctx, StreamKey("str"), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.RPush(ctx, metaKey("list"), "not a record").Err(); err != nil {
		t.Fatal(err)
	}
	res, err := rdb.FCall(ctx, "wspubsub_publish_batch", nil,
		`{"recipients":["k1"],"data":1}`, "",
		`{"recipients":["str"],"data":2}`, "",
		`{"recipients":["k2"],"data":3}`, "once",
		`{"recipients":["k3","str"],"data":4}`, "",
		`{"recipients":["list"],"data":5}`, "",
		`{"recipients":["k1"],"data":6}`, "").Slice()
	if err != nil || len(res) != 6 {
		t.Fatalf("batch: %v %v", res, err)
	}
	for i, want := range []bool{true, false, true, false, false, true} {
		_, ok := res[i].([]any)
		e, _ := res[i].(error)
		if ok != want || (!want && (e == nil || !strings.Contains(e.Error(), "WRONGTYPE"))) {
			t.Fatalf("answer %d: %#v, want recorded %v (else WRONGTYPE)", i, res[i], want)
		}
	}
	var p envelope.Parser
	for _, want := range []string{`{"data":1}`, `{"data":3}`, `{"data":6}`} {
		env, err := p.ParseRecorded([]byte(nextPublished(t, got)))
		if err != nil || string(env.Payload) != want {
			t.Fatalf("published %s (%v), want %s", env.Payload, err, want)
		}
	}
	if r, err := b.Since(ctx, "k1", "0"); err != nil || r.Gap || len(r.Entries) != 2 {
		t.Fatalf("k1: %+v %v", r, err)
	}
	// Through the gateway: that message's error, the queue goes on.
	if _, err := b.Record(ctx, []byte(`{"recipients":["str"],"data":7}`), ""); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Fatalf("Record to a key of another type: %v", err)
	}
	if r, err := b.Record(ctx, []byte(`{"recipients":["k2"],"data":8}`), "once"); err != nil || !r.Duplicate {
		t.Fatalf("a repeat after the failures: %+v %v", r, err)
	}
}

// A panic while a batch is recorded answers that batch's calls with an
// error and leaves the queue working; a lead call whose context ends
// returns without waiting for its batch.
func TestRecordQueueSurvivesPanicsAndHonoursContext(t *testing.T) {
	var log syncBuffer
	r := &Redis{cfg: RedisConfig{Logger: slog.New(slog.NewTextHandler(&log, nil))}}
	var mu sync.Mutex
	fate := "panic" // the next batch's: "panic", "block" or "ok"
	setFate := func(f string) { mu.Lock(); fate = f; mu.Unlock() }
	blocked, release := make(chan struct{}, 1), make(chan struct{})
	q := &recordQueue{send: func(_ context.Context, _ *Redis, calls []*recordCall) {
		mu.Lock()
		f := fate
		mu.Unlock()
		switch f {
		case "panic":
			panic("boom")
		case "block":
			blocked <- struct{}{}
			<-release
		}
		for _, c := range calls {
			c.rec = Recorded{IDs: []string{"e.1-0"}}
		}
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msg := []byte(`{"recipients":["k"],"data":1}`)
	if _, err := q.record(ctx, r, msg, ""); err == nil || !strings.Contains(err.Error(), "internal error: boom") {
		t.Fatalf("a panicking batch: %v", err)
	}
	if out := log.String(); !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "boom") {
		t.Fatalf("the panic was not logged: %s", out)
	}
	setFate("ok")
	if rec, err := q.record(ctx, r, msg, ""); err != nil || len(rec.IDs) != 1 {
		t.Fatalf("after a panic: %+v %v", rec, err)
	}

	// A batch that does not return: its lead gives up on its context.
	setFate("block")
	lctx, lcancel := context.WithCancel(ctx)
	lead := make(chan error, 1)
	go func() { _, err := q.record(lctx, r, msg, ""); lead <- err }()
	select {
	case <-blocked:
	case <-ctx.Done():
		t.Fatal("the batch was never sent")
	}
	setFate("ok")
	// Another call meanwhile waits for the next batch.
	next := make(chan error, 1)
	go func() { _, err := q.record(ctx, r, msg, ""); next <- err }()
	lcancel()
	select {
	case err := <-lead:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("lead after its context ended: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the lead waited for its batch past its context")
	}
	close(release)
	select {
	case err := <-next:
		if err != nil {
			t.Fatalf("the call queued behind the stuck batch: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the call queued behind the stuck batch was never answered")
	}
}

// FCALL wspubsub_publish_batch: each message as by wspubsub_publish, in
// order, its answer (or error) in its place.
func TestRedisHistoryBatch(t *testing.T) {
	srv := testenv.Redis(t)
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		History: HistoryConfig{Size: 10, TTL: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := runBroker(t, b)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	res, err := rdb.FCall(ctx, "wspubsub_publish_batch", nil,
		`{"recipients":["k1"],"data":1}`, "",
		`{"recipients":["k2","k1"],"data":2}`, "once",
		`{"recipients":["k1"]}`, "",
		`{"recipients":["k2"],"data":"again"}`, "once",
		`{"broadcast":true,"data":3}`, "").Slice()
	if err != nil || len(res) != 5 {
		t.Fatalf("batch: %v %v", res, err)
	}
	ids := func(i, want int) []any {
		t.Helper()
		l, ok := res[i].([]any)
		if !ok || len(l) != want {
			t.Fatalf("answer %d: %#v", i, res[i])
		}
		return l
	}
	one, two := ids(0, 2), ids(1, 3)
	if one[0] != int64(0) || two[0] != int64(0) {
		t.Fatalf("answers %v %v", one, two)
	}
	if e, ok := res[2].(error); !ok || !strings.Contains(e.Error(), `no "data"`) {
		t.Fatalf("a bad message's answer: %#v", res[2])
	}
	if dup := ids(3, 3); dup[0] != int64(1) || dup[1] != two[1] || dup[2] != two[2] {
		t.Fatalf("a repeat within the batch: %v, first %v", dup, two)
	}
	if bc := ids(4, 1); bc[0] != int64(0) {
		t.Fatalf("broadcast: %v", bc)
	}
	var p envelope.Parser
	for _, want := range []string{`{"data":1}`, `{"data":2}`, `{"data":3}`} {
		select {
		case m := <-got:
			env, err := p.Parse([]byte(m))
			if err != nil || string(env.Payload) != want {
				t.Fatalf("published %s, want payload %s", m, want)
			}
		case <-time.After(patience):
			t.Fatal("batch not published")
		}
	}
	if r, err := b.Since(ctx, "k1", one[1].(string)); err != nil || r.Gap || len(r.Entries) != 1 || r.Entries[0].ID != two[2] {
		t.Fatalf("k1 after the batch: %+v %v", r, err)
	}
	for _, bad := range [][]any{{`{"recipients":["k1"],"data":1}`}, {}} {
		if err := rdb.FCall(ctx, "wspubsub_publish_batch", nil, bad...).Err(); err == nil || !strings.Contains(err.Error(), "usage") {
			t.Fatalf("batch %v: %v, want the usage", bad, err)
		}
	}
}
