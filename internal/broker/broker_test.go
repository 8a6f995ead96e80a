package broker

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// patience is how long a test waits for something that must happen (a
// message, a subscription, a reconnection). Only a loss or a hang takes
// that long, so a slow or loaded machine is never failed for being slow.
const patience = time.Minute

// conformance checks the behaviour every Broker shares: Run hands inbound
// messages to the handler in order, Ready turns true, Publish reaches
// watchers of other channels. inject publishes on the inbound channel from
// outside; watch observes a channel.
func conformance(t *testing.T, b Broker, inject func(string), watch func(string) <-chan string) {
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 100)
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, func(p []byte) { got <- string(p) }) }()
	deadline := time.Now().Add(patience)
	for !b.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, m := range []string{"one", "two", "three"} {
		inject(m)
	}
	for _, want := range []string{"one", "two", "three"} {
		select {
		case m := <-got:
			if m != want {
				t.Fatalf("got %q, want %q", m, want)
			}
		case <-time.After(patience):
			t.Fatalf("no %q", want)
		}
	}
	events := watch("connected")
	if err := b.Publish(ctx, "connected", []byte("key-1")); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-events:
		if e != "key-1" {
			t.Fatalf("event %q", e)
		}
	case <-time.After(patience):
		t.Fatal("no event")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if b.Ready() {
		t.Fatal("ready after Run returned")
	}
}

func TestMemoryBroker(t *testing.T) {
	b := NewMemory("in")
	conformance(t, b,
		func(m string) { _ = b.Publish(context.Background(), "in", []byte(m)) },
		func(ch string) <-chan string {
			c, _ := b.Subscribe(ch)
			out := make(chan string, 10)
			go func() {
				for p := range c {
					out <- string(p)
				}
			}()
			return out
		})
}

func TestRedisBroker(t *testing.T) {
	srv := testenv.Redis(t)
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	conformance(t, b,
		func(m string) { rdb.Publish(context.Background(), "in", m) },
		func(ch string) <-chan string {
			ps := rdb.Subscribe(context.Background(), ch)
			if _, err := ps.Receive(context.Background()); err != nil {
				t.Fatal(err)
			}
			out := make(chan string, 10)
			go func() {
				for m := range ps.Channel() {
					out <- m.Payload
				}
			}()
			t.Cleanup(func() { ps.Close() })
			return out
		})
}

func TestRedisBrokerResubscribesAfterRestart(t *testing.T) {
	srv := testenv.Redis(t)
	var reconnects, subscribed atomic.Int32
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", MaxBackoff: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), OnReconnect: func() { reconnects.Add(1) },
		OnSubscribed: func() { subscribed.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 10)
	go func() { _ = b.Run(ctx, func(p []byte) { got <- string(p) }) }()
	waitFor := func(want bool) {
		deadline := time.Now().Add(patience)
		for b.Ready() != want {
			if time.Now().After(deadline) {
				t.Fatalf("Ready never became %v", want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor(true)
	srv.Stop()
	waitFor(false)
	// Several attempts fail during the outage: it lasts until two have,
	// however long the machine takes to make them.
	for deadline := time.Now().Add(patience); reconnects.Load() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("reconnects = %d after %v of outage, want several attempts", reconnects.Load(), patience)
		}
	}
	srv.Start()
	waitFor(true)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	rdb.Publish(ctx, "in", "after")
	select {
	case m := <-got:
		if m != "after" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(patience):
		t.Fatal("nothing delivered after restart")
	}
	if n := reconnects.Load(); n < 2 {
		t.Fatalf("reconnects = %d, want several attempts during the outage", n)
	}
	// At start too: clients admitted before the first subscription must be
	// caught up from history like those of a lost one.
	if n := subscribed.Load(); n != 2 {
		t.Fatalf("OnSubscribed called %d times, want 2 (start, after the restart)", n)
	}
}

func TestBackoffIsCappedAndJittered(t *testing.T) {
	seen := map[time.Duration]bool{}
	for n := range 40 {
		d := backoff(n, 50*time.Millisecond, time.Second)
		if d < 0 || d > time.Second {
			t.Fatalf("backoff(%d) = %v", n, d)
		}
		seen[d] = true
	}
	if len(seen) < 30 {
		t.Fatal("no jitter")
	}
}
