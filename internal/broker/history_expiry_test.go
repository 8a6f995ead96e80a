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

	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

// historyClock moves a history past its limits: past(key) until nothing
// recorded for key so far is held (its TTL), forget(key) until the key's
// meta record is gone too (its meta TTL).
type historyClock struct {
	past, forget func(t *testing.T, key string)
}

// historyExpiryConformance checks what both histories answer once messages
// have expired (issue 8's audit): no silent loss after resuming from a
// position told on an empty history (A), no gap for a client that had
// everything and comes back after the TTL (B).
func historyExpiryConformance(t *testing.T, b historyBroker, got <-chan string, clock historyClock) {
	ctx := context.Background()
	base := fmt.Sprintf("exp-%d", time.Now().UnixNano())
	rec := func(key string, n int) string {
		t.Helper()
		r, err := b.Record(ctx, fmt.Appendf(nil, `{"recipients":[%q],"data":%d}`, key, n), "")
		if err != nil || len(r.IDs) != 1 {
			t.Fatalf("Record %d: %+v %v", n, r, err)
		}
		select {
		case <-got:
		case <-time.After(patience):
			t.Fatal("recorded message not published")
		}
		return r.IDs[0]
	}
	since := func(key, from string) Replay {
		t.Helper()
		r, err := b.Since(ctx, key, from)
		if err != nil {
			t.Fatalf("Since(%q): %v", from, err)
		}
		return r
	}
	entries := func(r Replay) (ids []string) {
		for _, e := range r.Entries {
			ids = append(ids, e.ID)
		}
		return ids
	}

	t.Run("A: position on an empty history, then a message lost to the TTL", func(t *testing.T) {
		key := base + "-a"
		pos := since(key, "").Top
		id11 := rec(key, 11)
		if r := since(key, pos); r.Gap || fmt.Sprint(entries(r)) != fmt.Sprint([]string{id11}) {
			t.Fatalf("from the position, 11 held: %+v", r)
		}
		clock.past(t, key)
		id12 := rec(key, 12)
		if r := since(key, pos); !r.Gap || fmt.Sprint(entries(r)) != fmt.Sprint([]string{id12}) {
			t.Fatalf("from the position after 11 expired: %+v, want a gap then 12", r)
		}
		if r := since(key, "0"); !r.Gap || len(r.Entries) != 1 {
			t.Fatalf("from 0 after 11 expired: %+v, want a gap", r)
		}
		if r := since(key, id11); r.Gap || fmt.Sprint(entries(r)) != fmt.Sprint([]string{id12}) {
			t.Fatalf("from 11 (received) after it expired: %+v, want 12 without gap", r)
		}
		a, _ := envelope.ParseID(id11)
		b, _ := envelope.ParseID(id12)
		if !b.After(a) || a.Epoch != b.Epoch {
			t.Fatalf("ids across the expiry: %s then %s, want one epoch, increasing", id11, id12)
		}
		// Nothing held at all: the position is still judged.
		clock.past(t, key)
		if r := since(key, pos); !r.Gap || len(r.Entries) != 0 {
			t.Fatalf("from the position, everything expired: %+v, want a gap", r)
		}
	})

	t.Run("B: everything received, back after the TTL on a quiet key", func(t *testing.T) {
		key := base + "-b"
		id1 := rec(key, 1)
		id2 := rec(key, 2)
		clock.past(t, key)
		if r := since(key, id2); r.Gap || len(r.Entries) != 0 {
			t.Fatalf("from the last id after the TTL: %+v, want no gap", r)
		}
		if r := since(key, ""); r.Top != id2 {
			t.Fatalf("position after the TTL: %+v, want %s", r, id2)
		}
		if r := since(key, id1); !r.Gap || len(r.Entries) != 0 {
			t.Fatalf("from 1 after 2 expired: %+v, want a gap", r)
		}
		if r := since(key, "zzz"+id2[strings.Index(id2, "."):]); !r.Gap {
			t.Fatalf("another epoch after the TTL: %+v, want a gap", r)
		}
		id3 := rec(key, 3)
		if r := since(key, id2); r.Gap || fmt.Sprint(entries(r)) != fmt.Sprint([]string{id3}) {
			t.Fatalf("from the last id, one more published: %+v, want 3 without gap", r)
		}
		// The meta record is gone too: nothing can be judged any more.
		clock.forget(t, key)
		if r := since(key, id3); !r.Gap {
			t.Fatalf("from the last id once the key is forgotten: %+v, want a gap", r)
		}
		id4 := rec(key, 4)
		if p, _ := envelope.ParseID(id4); strings.HasPrefix(id4, p.Epoch+".") && strings.HasPrefix(id3, p.Epoch+".") {
			t.Fatalf("a forgotten key kept its epoch: %s then %s", id3, id4)
		}
		if r := since(key, id3); !r.Gap || fmt.Sprint(entries(r)) != fmt.Sprint([]string{id4}) {
			t.Fatalf("an id of the forgotten life: %+v, want a gap then 4", r)
		}
	})
}

func TestMemoryHistoryExpiry(t *testing.T) {
	cfg := HistoryConfig{Size: 3, TTL: time.Minute, MetaTTL: time.Hour}
	b := NewMemory("in").WithHistory(cfg)
	var mu sync.Mutex
	now := time.Now()
	b.hist.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) func(*testing.T, string) {
		return func(*testing.T, string) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	}
	historyExpiryConformance(t, b, runBroker(t, b), historyClock{past: advance(cfg.TTL + time.Millisecond), forget: advance(cfg.MetaTTL + time.Millisecond)})
}

// The same against a real Redis. Expiry is Redis dropping a key: the test
// checks that the stream and the meta record carry their TTLs, then drops
// them itself (waiting for them would make every step race the TTL).
func TestRedisHistoryExpiry(t *testing.T) {
	srv := testenv.Redis(t)
	cfg := HistoryConfig{Size: 3, TTL: time.Minute, MetaTTL: time.Hour}
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), History: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	expire := func(name func(string) string, ttl time.Duration) func(*testing.T, string) {
		return func(t *testing.T, key string) {
			t.Helper()
			ctx := context.Background()
			if d, err := rdb.PTTL(ctx, name(key)).Result(); err != nil || d <= 0 || d > ttl {
				t.Fatalf("PTTL %s = %v %v, want in (0, %v]", name(key), d, err, ttl)
			}
			if err := rdb.Del(ctx, name(key)).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	past := expire(StreamKey, cfg.TTL+cfg.TTL/8)
	historyExpiryConformance(t, b, runBroker(t, b), historyClock{
		past: past,
		forget: func(t *testing.T, key string) {
			t.Helper()
			past(t, key) // a meta record outlives its stream
			expire(metaKey, cfg.MetaTTL)(t, key)
		},
	})
}

// Entries older than the TTL are hidden from a resume at once, though the
// stream holding them lives a little longer (it is trimmed and its expiry
// pushed back at most every TTL/8). Each check follows the event it
// depends on: nothing races the TTL.
func TestRedisHistoryHidesExpiredEntries(t *testing.T) {
	srv := testenv.Redis(t)
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		History: HistoryConfig{Size: 10, TTL: time.Second, MetaTTL: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := runBroker(t, b)
	ctx := context.Background()
	const key = "hidden"
	pos, err := b.Since(ctx, key, "")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for n := range 2 {
		r, err := b.Record(ctx, fmt.Appendf(nil, `{"recipients":[%q],"data":%d}`, key, n), "")
		if err != nil {
			t.Fatal(err)
		}
		<-got
		ids = append(ids, r.IDs[0])
	}
	waitFor(t, "the entries to be older than the TTL", func() bool {
		r, err := b.Since(ctx, key, "0")
		return err == nil && len(r.Entries) == 0
	})
	for _, c := range []struct {
		from string
		gap  bool
	}{{ids[1], false}, {ids[0], true}, {pos.Top, true}, {"0", true}} {
		if r, err := b.Since(ctx, key, c.from); err != nil || r.Gap != c.gap || len(r.Entries) != 0 || r.Top != ids[1] {
			t.Fatalf("from %s: %+v %v, want gap %v, nothing held, top %s", c.from, r, err, c.gap, ids[1])
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	waitFor(t, "the stream to expire", func() bool { return rdb.Exists(ctx, StreamKey(key)).Val() == 0 })
	if r, err := b.Since(ctx, key, ids[1]); err != nil || r.Gap || r.Top != ids[1] {
		t.Fatalf("from the last id, stream gone: %+v %v", r, err)
	}
}

// A stream recorded by an older version of the functions has no meta
// record: its ids stay resumable, and recording goes on in its epoch. A
// stream written past its meta record (an older gateway still loading
// its library during an upgrade) is followed, not overwritten. A resume
// gives such a key its record back, so that once the stream expires the
// last id still resumes without a gap.
func TestRedisHistoryWithoutMetaRecord(t *testing.T) {
	srv := testenv.Redis(t)
	cfg := HistoryConfig{Size: 10, TTL: time.Minute, MetaTTL: time.Hour}
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		History: cfg})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := runBroker(t, b)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	const key = "legacy"
	rec := func(n int) string {
		t.Helper()
		r, err := b.Record(ctx, fmt.Appendf(nil, `{"recipients":[%q],"data":%d}`, key, n), "")
		if err != nil {
			t.Fatal(err)
		}
		<-got
		return r.IDs[0]
	}
	id1, id2 := rec(1), rec(2)
	rdb.Del(ctx, metaKey(key))
	if r, err := b.Since(ctx, key, id1); err != nil || r.Gap || r.Top != id2 || len(r.Entries) != 1 || r.Entries[0].ID != id2 {
		t.Fatalf("from 1 without meta record: %+v %v", r, err)
	}
	id3 := rec(3)
	if r, err := b.Since(ctx, key, id1); err != nil || r.Gap || len(r.Entries) != 2 || r.Entries[1].ID != id3 {
		t.Fatalf("from 1 after recording without meta record: %+v %v", r, err)
	}
	epoch := id1[:strings.Index(id1, ".")]
	if !strings.HasPrefix(id3, epoch+".") {
		t.Fatalf("epoch changed: %s then %s", id1, id3)
	}
	// An entry added behind the meta record's back, as the older library
	// did: the next id follows it.
	raw, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: StreamKey(key), Values: []any{"e", epoch, "v", id3[len(epoch)+1:], "m", `{"recipients":["legacy"],"data":4}`}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	id5 := rec(5)
	if a, b := envelope.ParseID(epoch + "." + raw); !b {
		t.Fatal("bad id", raw)
	} else if c, _ := envelope.ParseID(id5); !c.After(a) {
		t.Fatalf("id %s not after the entry written without meta record %s", id5, raw)
	}
	if r, err := b.Since(ctx, key, id3); err != nil || r.Gap || len(r.Entries) != 2 || r.Entries[1].ID != id5 {
		t.Fatalf("from 3: %+v %v", r, err)
	}

	// The record lost again (evicted, or never written: a stream of the
	// older version), then a resume, then the stream expires (dropped
	// here: see TestRedisHistoryExpiry).
	for _, from := range []string{id5, ""} {
		rdb.Del(ctx, metaKey(key))
		if r, err := b.Since(ctx, key, from); err != nil || r.Gap || r.Top != id5 {
			t.Fatalf("from %q without meta record: %+v %v", from, r, err)
		}
		if d, err := rdb.PTTL(ctx, metaKey(key)).Result(); err != nil || d <= 0 || d > cfg.MetaTTL {
			t.Fatalf("the resume did not write a meta record: PTTL %v %v, want in (0, %v]", d, err, cfg.MetaTTL)
		}
	}
	rdb.Del(ctx, StreamKey(key))
	if r, err := b.Since(ctx, key, id5); err != nil || r.Gap || r.Top != id5 || len(r.Entries) != 0 {
		t.Fatalf("from the last id, stream expired: %+v %v, want no gap", r, err)
	}
	if r, err := b.Since(ctx, key, id3); err != nil || !r.Gap {
		t.Fatalf("from an older id, stream expired: %+v %v, want a gap", r, err)
	}
	// Recording goes on after the last id, in the same epoch.
	id6 := rec(6)
	if r, err := b.Since(ctx, key, id5); err != nil || r.Gap || len(r.Entries) != 1 || r.Entries[0].ID != id6 {
		t.Fatalf("from 5 after recording: %+v %v", r, err)
	}
}
