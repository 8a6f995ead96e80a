package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/wspubsub/wspubsub/internal/metrics"
)

// Publishing durably: idempotency keys, the Redis function, ids that only
// the history writes.

// A publish repeated with the same Idempotency-Key is acknowledged with
// the same ids and not delivered again.
func TestResumeIdempotentPublish(t *testing.T) {
	const key, other = "rs-idem", "rs-idem-2"
	s := newStack(t, nil, key, other)
	c := rsOpen(t, s, rsWS, key, "&since=", nil)
	rsPosition(t, c)
	body := envelope("1", key)
	first := rsPost(t, s, body, "order-17")
	if first.code != 202 || first.Status != "accepted" || len(first.IDs) != 1 {
		t.Fatalf("first: %d %s", first.code, first.raw)
	}
	again := rsPost(t, s, body, "order-17")
	if again.code != 202 || again.Status != "duplicate" || fmt.Sprint(again.IDs) != fmt.Sprint(first.IDs) {
		t.Fatalf("repeat: %d %s, first %s", again.code, again.raw, first.raw)
	}
	rsExpect(t, c, first.IDs[0], 1)
	id2 := rsPublish(t, s, key, 2) // next in line: the repeat was not delivered
	rsExpect(t, c, id2, 2)
	if got := testutil.ToFloat64(s.gw.Metrics().Publishes.WithLabelValues(metrics.PublishDuplicate)); got != 1 {
		t.Errorf("publishes{duplicate} = %v", got)
	}
	// One id per recipient, in order.
	two := rsPost(t, s, `{"recipients":["`+key+`","`+other+`"],"data":3}`, strings.Repeat("k", 128))
	if two.code != 202 || len(two.IDs) != 2 || two.IDs[0] == two.IDs[1] {
		t.Fatalf("two recipients: %d %s", two.code, two.raw)
	}
	rsExpect(t, c, two.IDs[0], 3)
	for _, bad := range []string{"has space", strings.Repeat("k", 129), "ü", "a/b"} {
		if a := rsPost(t, s, envelope("4", key), bad); a.code != 400 || a.Error != "bad_idempotency_key" {
			t.Errorf("Idempotency-Key %q: %d %s", bad, a.code, a.raw)
		}
	}
	id5 := rsPublish(t, s, key, 5) // nothing of the refused ones was delivered
	rsExpect(t, c, id5, 5)
}

// Backends publish durably in one round trip with the Redis function; the
// message reaches clients with its id and can be resumed from.
func TestResumeRedisFunctionPublish(t *testing.T) {
	const key = "rs-fcall"
	s := newStack(t, nil, key)
	c := rsOpen(t, s, rsWS, key, "&since=", nil)
	pos := rsPosition(t, c)
	ctx := context.Background()
	fcall := func(n int, idem ...any) (dup int64, id string) {
		t.Helper()
		v, err := s.rdb.FCall(ctx, "wspubsub_publish", nil, append([]any{envelope(fmt.Sprint(n), key)}, idem...)...).Result()
		list, ok := v.([]any)
		if err != nil || !ok || len(list) != 2 {
			t.Fatalf("FCALL wspubsub_publish: %v %v", v, err)
		}
		return list[0].(int64), list[1].(string)
	}
	dup, id1 := fcall(1, "backend-1")
	if dup != 0 {
		t.Fatal("first call reported a duplicate")
	}
	rsExpect(t, c, id1, 1)
	if dup, again := fcall(1, "backend-1"); dup != 1 || again != id1 {
		t.Fatalf("repeat: dup=%d id=%s, want 1 %s", dup, again, id1)
	}
	_, id2 := fcall(2)
	rsExpect(t, c, id2, 2) // next in line: the repeat was not delivered
	c2 := rsOpen(t, s, rsPolling, key, "&since="+pos, nil)
	rsExpect(t, c2, id1, 1)
	rsExpect(t, c2, id2, 2)
	if err := s.rdb.FCall(ctx, "wspubsub_publish", nil, `{"recipients":["`+key+`"]}`).Err(); err == nil || !strings.Contains(err.Error(), "wspubsub") {
		t.Fatalf("FCALL without data: %v", err)
	}
}

// A publisher's own "wspubsub_ids" member (a backend relaying a message it
// read from the gateways' channel, say) must not replace the ids the
// history gave: clients get the recorded id, and can resume from it.
func TestResumeIDsComeFromTheHistory(t *testing.T) {
	const key = "rs-forged"
	s := newStack(t, nil, key)
	c := rsOpen(t, s, rsWS, key, "&since=", nil)
	pos := rsPosition(t, c)
	a := rsPost(t, s, `{"recipients":["`+key+`"],"wspubsub_ids":["zzzz.99999999999999-0"],"data":1}`, "")
	if a.code != 202 || len(a.IDs) != 1 {
		t.Fatalf("publish: %d %s", a.code, a.raw)
	}
	rsExpect(t, c, a.IDs[0], 1)
	ctx := context.Background()
	v, err := s.rdb.FCall(ctx, "wspubsub_publish", nil, `{"wspubsub_ids":["zzzz.99999999999999-0"],"recipients":["`+key+`"],"data":2}`).Slice()
	if err != nil || len(v) != 2 {
		t.Fatalf("FCALL: %v %v", v, err)
	}
	rsExpect(t, c, v[1].(string), 2)
	id3 := rsPublish(t, s, key, 3)
	rsExpect(t, c, id3, 3)
	r := rsOpen(t, s, rsWS, key, "&since="+pos, nil)
	rsExpect(t, r, a.IDs[0], 1)
	rsExpect(t, r, v[1].(string), 2)
	rsExpect(t, r, id3, 3)
}
