package broker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

// historyBroker is a Broker with a History, as the gateway uses it.
type historyBroker interface {
	Broker
	History
}

// historyConformance checks the contract both histories share, against a
// history of 3 messages per key. b must be running (its inbound messages go
// to got).
func historyConformance(t *testing.T, b historyBroker, got <-chan string) {
	ctx := context.Background()
	key := fmt.Sprintf("alice-%d", time.Now().UnixNano())
	rec := func(n int, idem string) Recorded {
		t.Helper()
		r, err := b.Record(ctx, fmt.Appendf(nil, `{"recipients":[%q], "data":{"n":%d.50},"x":"y"}`, key, n), idem)
		if err != nil {
			t.Fatalf("Record %d: %v", n, err)
		}
		return r
	}
	since := func(from string) Replay {
		t.Helper()
		r, err := b.Since(ctx, key, from)
		if err != nil {
			t.Fatalf("Since(%q): %v", from, err)
		}
		return r
	}
	pos := since("")
	if p, ok := envelope.ParseID(pos.Top); pos.Gap || !ok || p.Epoch == "" || len(pos.Entries) != 0 {
		t.Fatalf("empty history: %+v, want a real position", pos)
	}
	if r := since(""); r.Top != pos.Top {
		t.Fatalf("position again: %+v, want %s", r, pos.Top)
	}
	if r := since(pos.Top); r.Gap || len(r.Entries) != 0 {
		t.Fatalf("empty history from its position: %+v", r)
	}
	if r := since("0"); r.Gap || len(r.Entries) != 0 {
		t.Fatalf("empty history from 0: %+v", r)
	}
	if r := since("abc.1-0"); !r.Gap {
		t.Fatalf("an unknown id on an empty history must be a gap: %+v", r)
	}
	var ids []string
	for n := 1; n <= 3; n++ {
		r := rec(n, "")
		if r.Duplicate || len(r.IDs) != 1 {
			t.Fatalf("Record: %+v", r)
		}
		ids = append(ids, r.IDs[0])
		select {
		case m := <-got:
			var p envelope.Parser
			env, err := p.ParseRecorded([]byte(m))
			if err != nil || len(env.IDs) != 1 || string(env.IDs[0]) != r.IDs[0] {
				t.Fatalf("published %s (%v), want ids %v", m, err, r.IDs)
			}
			if want := fmt.Sprintf(`{"data":{"n":%d.50},"x":"y"}`, n); string(env.Payload) != want {
				t.Fatalf("payload %s, want %s", env.Payload, want)
			}
		case <-time.After(patience):
			t.Fatal("recorded message not published")
		}
	}
	for i := 1; i < 3; i++ {
		a, _ := envelope.ParseID(ids[i-1])
		b, ok := envelope.ParseID(ids[i])
		if !ok || !b.After(a) || a.After(b) {
			t.Fatalf("ids not increasing: %v", ids)
		}
	}
	if r := since(""); r.Top != ids[2] || len(r.Entries) != 0 {
		t.Fatalf("position: %+v, want top %s", r, ids[2])
	}
	r := since(ids[0])
	if r.Gap || len(r.Entries) != 2 || r.Entries[0].ID != ids[1] || r.Entries[1].ID != ids[2] {
		t.Fatalf("since first: %+v", r)
	}
	if string(r.Entries[1].Payload) != `{"data":{"n":3.50},"x":"y"}` {
		t.Fatalf("payload %s", r.Entries[1].Payload)
	}
	if r := since(ids[2]); r.Gap || len(r.Entries) != 0 {
		t.Fatalf("since last: %+v", r)
	}
	if r := since("0"); r.Gap || len(r.Entries) != 3 {
		t.Fatalf("since 0: %+v", r)
	}
	// A fourth message trims the first: resuming from before it is a gap.
	ids = append(ids, rec(4, "").IDs...)
	<-got
	if r := since(ids[0]); r.Gap || len(r.Entries) != 3 {
		t.Fatalf("since the oldest id still known: %+v", r)
	}
	if r := since(pos.Top); !r.Gap || len(r.Entries) != 3 {
		t.Fatalf("since the position before the first, trimmed: %+v", r)
	}
	if r := since("0"); !r.Gap || len(r.Entries) != 3 {
		t.Fatalf("since 0 after a trim: %+v", r)
	}
	if r := since("zzz" + ids[0][strings.Index(ids[0], "."):]); !r.Gap || len(r.Entries) != 3 {
		t.Fatalf("another epoch must be a gap: %+v", r)
	}
	if r := since("not-an-id"); !r.Gap || len(r.Entries) != 3 {
		t.Fatalf("a malformed id must be a gap: %+v", r)
	}
	if r := since(ids[3][:strings.Index(ids[3], ".")] + ".99999999999999-0"); !r.Gap || len(r.Entries) != 3 {
		t.Fatalf("an id past the last one (the history lost it) must be a gap: %+v", r)
	}
	// Idempotency: a repeat is acknowledged with the same ids, not published.
	first := rec(5, "order-17")
	<-got
	again := rec(5, "order-17")
	if !again.Duplicate || len(again.IDs) != 1 || again.IDs[0] != first.IDs[0] {
		t.Fatalf("repeat: %+v, first %+v", again, first)
	}
	select {
	case m := <-got:
		t.Fatalf("a repeat was published again: %s", m)
	case <-time.After(100 * time.Millisecond):
	}
	// A message listing the key twice is recorded once.
	two, err := b.Record(ctx, fmt.Appendf(nil, `{"recipients":[%q,%q],"data":6}`, key, key), "")
	if err != nil || len(two.IDs) != 2 || two.IDs[0] != two.IDs[1] {
		t.Fatalf("repeated recipient: %+v %v", two, err)
	}
	<-got
	// A broadcast belongs to no history; it is published as it is.
	if r, err := b.Record(ctx, []byte(`{"broadcast":true,"data":7}`), ""); err != nil || r.IDs != nil {
		t.Fatalf("broadcast: %+v %v", r, err)
	}
	if m := <-got; m != `{"broadcast":true,"data":7}` {
		t.Fatalf("broadcast published as %s", m)
	}
}

func runBroker(t *testing.T, b Broker) <-chan string {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	got := make(chan string, 100)
	go func() { _ = b.Run(ctx, func(p []byte) { got <- string(p) }) }()
	waitReady(t, b)
	return got
}

func waitReady(t *testing.T, b Broker) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !b.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMemoryHistory(t *testing.T) {
	b := NewMemory("in").WithHistory(HistoryConfig{Size: 3, TTL: time.Minute})
	historyConformance(t, b, runBroker(t, b))
}

func TestRedisHistory(t *testing.T) {
	srv := testenv.Redis(t)
	b, err := NewRedis(RedisConfig{URL: srv.URL(), Inbound: "in", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		History: HistoryConfig{Size: 3, TTL: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	historyConformance(t, b, runBroker(t, b))
}
