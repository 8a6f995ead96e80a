package broker

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// split runs b with a handler per kind of message; each message received
// is "plain:<payload>" or "recorded:<payload>", in the order handled.
func split(t *testing.T, b Broker) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.RunSplit(ctx,
			func(p []byte) { got <- "plain:" + string(p) },
			func(p []byte) { got <- "recorded:" + string(p) })
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitReady(t, b)
	return got
}

func next(t *testing.T, got <-chan string) string {
	t.Helper()
	select {
	case m := <-got:
		return m
	case <-time.After(patience):
		t.Fatalf("no message within %v", patience)
		return ""
	}
}

// recordedApart checks that what Record publishes reaches the recorded
// handler with its ids, and that a plain PUBLISH on the inbound channel
// reaches the plain one whatever it carries (a forged "wspubsub_ids"
// member included): only the history functions write the recorded channel.
func recordedApart(t *testing.T, b interface {
	Broker
	History
}, got <-chan string, publish func(string)) {
	t.Helper()
	ctx := context.Background()
	forged := `{"wspubsub_ids":["zz.99999999999999-0"],"recipients":["k"],"data":1}`
	publish(forged)
	if m := next(t, got); m != "plain:"+forged {
		t.Fatalf("a plain PUBLISH arrived as %s", m)
	}
	rec, err := b.Record(ctx, []byte(`{"recipients":["k"],"data":2}`), "")
	if err != nil || len(rec.IDs) != 1 {
		t.Fatalf("Record: %+v %v", rec, err)
	}
	if m, want := next(t, got), `recorded:{"wspubsub_ids":["`+rec.IDs[0]+`"],`; !strings.HasPrefix(m, want) {
		t.Fatalf("a recorded message arrived as %s, want %s…", m, want)
	}
	publish(`{"recipients":["k"],"data":3}`)
	if m := next(t, got); m != `plain:{"recipients":["k"],"data":3}` {
		t.Fatalf("got %s", m)
	}
}

func TestMemoryRecordedChannelApart(t *testing.T) {
	b := NewMemory("in").WithHistory(HistoryConfig{Size: 10, TTL: time.Minute})
	got := split(t, b)
	recordedApart(t, b, got, func(m string) {
		if err := b.Publish(context.Background(), "in", []byte(m)); err != nil {
			t.Fatal(err)
		}
	})
}

// On Redis, through a restart too: both channels are subscribed again,
// and the subscription counts as restored (ready, OnSubscribed) once, when
// both are confirmed.
func TestRedisRecordedChannelApart(t *testing.T) {
	srv := testenv.Redis(t)
	var subscribed atomic.Int32
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", MaxBackoff: 200 * time.Millisecond,
		History: HistoryConfig{Size: 10, TTL: time.Minute}, OnSubscribed: func() { subscribed.Add(1) },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	publish := func(m string) {
		if err := rdb.Publish(context.Background(), "in", m).Err(); err != nil {
			t.Fatal(err)
		}
	}
	got := split(t, b)
	if n := subscribed.Load(); n != 1 {
		t.Fatalf("OnSubscribed called %d times for one subscription of two channels", n)
	}
	recordedApart(t, b, got, publish)

	srv.Stop()
	for deadline := time.Now().Add(patience); b.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("still ready with Redis stopped")
		}
	}
	srv.Start()
	waitReady(t, b)
	recordedApart(t, b, got, publish)
	if n := subscribed.Load(); n != 2 {
		t.Fatalf("OnSubscribed called %d times, want 2 (start, after the restart)", n)
	}
}
