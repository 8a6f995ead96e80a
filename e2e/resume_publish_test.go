package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

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

// A plain PUBLISH is delivered without id, whatever it carries: a
// "wspubsub_ids" member on it (a forged id of the key's current epoch, far
// in the future) is removed and counted, never trusted. Before, the forged
// id became the client's position: every acknowledged message after it
// looked older and was dropped for the connected resuming client, and
// resuming from it returned nothing and no gap.
func TestResumePlainPublishCannotForgeIDs(t *testing.T) {
	keys := map[string]string{rsWS: "rs-plain-ws", rsSSE: "rs-plain-sse", rsPolling: "rs-plain-poll"}
	s := newStack(t, nil, keys[rsWS], keys[rsSSE], keys[rsPolling])
	stripped := func() float64 {
		return testutil.ToFloat64(s.gw.Metrics().Stripped.WithLabelValues("untrusted_ids"))
	}
	for _, tr := range rsTransports {
		t.Run(tr, func(t *testing.T) {
			key := keys[tr]
			c := rsOpen(t, s, tr, key, "&since=", nil)
			rsPosition(t, c)
			id0 := rsPublish(t, s, key, 0)
			rsExpect(t, c, id0, 0)
			epoch, _, _ := strings.Cut(id0, ".")
			forged := epoch + ".99999999999999-0"
			before := stripped()
			s.publish(`{"wspubsub_ids":["` + forged + `"],"recipients":["` + key + `"],"data":"forged"}`)
			f := rsExpectRaw(t, c, `{"data":"forged"}`)
			if f.sseID != "" {
				t.Fatalf("the plain message came with an id: line %q", f.sseID)
			}
			if got := stripped(); got != before+1 {
				t.Fatalf("stripped{untrusted_ids} = %v, want %v", got, before+1)
			}
			// Nor can its own "id" member, first, pass for a history id: a
			// resuming client gets it with a space after the brace. (Not
			// over polling here: this test's poller takes any "id" member
			// for its position, as wspubsub.js does not.)
			if tr != rsPolling {
				s.publish(`{"recipients":["` + key + `"],"id":"` + forged + `","data":"id member"}`)
				rsExpectRaw(t, c, `{ "id":"`+forged+`","data":"id member"}`)
			}
			// Every acknowledged message after it: delivered, in order,
			// once (a repeat would come before the plain marker).
			ids := []string{id0}
			for n := 1; n <= 10; n++ {
				id := rsPublish(t, s, key, n)
				rsExpect(t, c, id, n)
				ids = append(ids, id)
			}
			s.publish(envelope(`"end"`, key))
			rsExpectRaw(t, c, `{"data":"end"}`)

			// Resuming from the forged id: a gap then everything held, or
			// everything held; never nothing. The message published after
			// the resume comes last either way, so no wait on silence.
			r := rsOpen(t, s, rsWS, key, "&since="+forged, nil)
			last := rsPublish(t, s, key, 11)
			first := r.next()
			if first.data == `{"gap":true}` {
				first = r.next()
			}
			if want := fmt.Sprintf(`{"id":%q,"data":0}`, ids[0]); first.data != want {
				t.Fatalf("resuming from the forged id: first message %q, want the oldest held %q", first.data, want)
			}
			for n, id := range ids[1:] {
				rsExpect(t, r, id, n+1)
			}
			rsExpect(t, r, last, 11)
		})
	}
}

// With --routing keys a plain PUBLISH reaches the lease holder, which
// forwards it to the key's channel: recorded (with the history's id) when
// history is on, live otherwise; its own "wspubsub_ids" goes neither way,
// and is counted there.
func TestResumeRoutedPlainPublishCannotForgeIDs(t *testing.T) {
	for _, history := range []string{"100", "0"} {
		t.Run("history-size="+history, func(t *testing.T) {
			const key = "rs-routed-forge"
			s := newStack(t, []string{"--routing", "keys", "--history-size", history}, key)
			eventually(t, 20*time.Second, "the forwarder subscribed", func() bool {
				n, _ := s.rdb.PubSubNumSub(context.Background(), s.cfg.Channel).Result()
				return n[s.cfg.Channel] == 1
			})
			stripped := func() float64 {
				return testutil.ToFloat64(s.gw.Metrics().Stripped.WithLabelValues("untrusted_ids"))
			}
			if history == "0" {
				c := rsOpen(t, s, rsWS, key, "", nil)
				rsWaitSessions(t, s, key, 1)
				s.publish(`{"wspubsub_ids":["zz.99999999999999-0"],"recipients":["` + key + `"],"data":"forged"}`)
				rsExpectRaw(t, c, `{"data":"forged"}`)
				if got := stripped(); got != 1 {
					t.Fatalf("stripped{untrusted_ids} = %v, want 1", got)
				}
				return
			}
			c := rsOpen(t, s, rsWS, key, "&since=", nil)
			rsPosition(t, c)
			id0 := rsPublish(t, s, key, 0)
			rsExpect(t, c, id0, 0)
			epoch, _, _ := strings.Cut(id0, ".")
			forged := epoch + ".99999999999999-0"
			s.publish(`{"wspubsub_ids":["` + forged + `"],"recipients":["` + key + `"],"data":"forged"}`)
			f := c.next()
			var got struct {
				ID   string
				Data string
			}
			if err := json.Unmarshal([]byte(f.data), &got); err != nil || got.Data != "forged" || got.ID == "" || got.ID == forged ||
				f.data != fmt.Sprintf(`{"id":%q,"data":"forged"}`, got.ID) {
				t.Fatalf("the forwarded message arrived as %q: want it recorded with the history's id", f.data)
			}
			if n := stripped(); n != 1 {
				t.Fatalf("stripped{untrusted_ids} = %v, want 1", n)
			}
			ids := []string{id0, got.ID}
			for n := 1; n <= 5; n++ {
				id := rsPublish(t, s, key, n)
				rsExpect(t, c, id, n)
				ids = append(ids, id)
			}
			r := rsOpen(t, s, rsWS, key, "&since="+id0, nil)
			rsExpectRaw(t, r, fmt.Sprintf(`{"id":%q,"data":"forged"}`, got.ID))
			for n, id := range ids[2:] {
				rsExpect(t, r, id, n+1)
			}
		})
	}
}
