package e2e

// The resume contract (issue 8) end to end, against real Redis: ids,
// replay without gap or duplicate on every transport, gap frames, the
// original frames for old clients, idempotent and Redis-level durable
// publish, Redis restarts. Support is in resume_support_test.go.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

// Connect from now (position frame), get 1, go away, miss 2..4, come back
// with the id of 1: exactly 2, 3, 4 in order, then live 5 — on each
// transport. EventSource comes back with Last-Event-ID, which wins over
// since.
func TestResumeEveryTransport(t *testing.T) {
	keys := []string{"rs-" + rsWS, "rs-" + rsSSE, "rs-" + rsPolling}
	s := newStack(t, []string{"--poll-timeout", "1s"}, keys...)
	for _, tr := range rsTransports {
		t.Run(tr, func(t *testing.T) {
			key := "rs-" + tr
			c := rsOpen(t, s, tr, key, "&since=", nil)
			if pos := rsPosition(t, c); pos != "0" {
				t.Fatalf("position on an empty history %q, want 0", pos)
			}
			id1 := rsPublish(t, s, key, 1)
			rsExpect(t, c, id1, 1)
			c.close()
			if tr != rsPolling { // a polling connection lingers; the next poll is a new page (sid)
				rsWaitGone(t, s, key)
			}
			var ids []string
			for n := 2; n <= 4; n++ {
				ids = append(ids, rsPublish(t, s, key, n))
			}
			q, hdr := "&since="+url.QueryEscape(id1), http.Header(nil)
			if tr == rsSSE {
				q, hdr = "&since=", http.Header{"Last-Event-ID": {id1}}
			}
			name := key
			if tr == rsWS {
				name = "key=" + key // the other form of the query
			}
			c = rsOpen(t, s, tr, name, q, hdr)
			for i, id := range ids {
				rsExpect(t, c, id, i+2)
			}
			id5 := rsPublish(t, s, key, 5)
			rsExpect(t, c, id5, 5)
			if tr != rsSSE {
				return
			}
			// A browser's own reconnect: Last-Event-ID only, no since.
			c.close()
			rsWaitGone(t, s, key)
			id6 := rsPublish(t, s, key, 6)
			c = rsOpen(t, s, tr, key, "", http.Header{"Last-Event-ID": {id5}})
			rsExpect(t, c, id6, 6)
		})
	}
	rsWaitMetric(t, s, metrics.ResumeFromNow, 3)
	rsWaitMetric(t, s, metrics.ResumeComplete, 4)
	replayed := s.gw.Metrics().Replayed
	eventually(t, 5*time.Second, "replayed = 10", func() bool { return testutil.ToFloat64(replayed) == 10 })
	if got := testutil.ToFloat64(s.gw.Metrics().Publishes.WithLabelValues(metrics.PublishRecorded)); got != 16 {
		t.Errorf("publishes{recorded} = %v, want 16", got)
	}
}

// rsWaitMetric waits for wspubsub_resumes_total{outcome} to reach want: it
// is counted just after the replay is queued, so a client may see the
// frames first.
func rsWaitMetric(t *testing.T, s *stack, outcome string, want float64) {
	t.Helper()
	c := s.gw.Metrics().Resumes.WithLabelValues(outcome)
	eventually(t, 5*time.Second, fmt.Sprintf("resumes{%s} = %v", outcome, want), func() bool { return testutil.ToFloat64(c) == want })
}

// Long-polling: an answer can be lost on the way, so a poll naming the
// same since as the poll answered last gets that answer again; naming the
// id received moves on. Messages without id are at most once.
func TestResumeLongPollingRetriesALostAnswer(t *testing.T) {
	const key = "rs-lp"
	s := newStack(t, []string{"--poll-timeout", "1s"}, key)
	p := rsOpen(t, s, rsPolling, key, "&since=", nil).(*rsPollConn)
	pos := rsPosition(t, p)
	answer := func(since, want string) {
		t.Helper()
		code, body, _ := p.poll(since)
		for deadline := time.Now().Add(10 * time.Second); code == 200 && body == "" && time.Now().Before(deadline); {
			code, body, _ = p.poll(since) // timed out empty: the message is on its way
		}
		if code != 200 || body != want {
			t.Fatalf("poll since=%q: %d %q, want %q", since, code, body, want)
		}
	}
	answer("", `{"id":"`+pos+`"}`) // the position frame, lost once
	id1, id2 := rsPublish(t, s, key, 1), rsPublish(t, s, key, 2)
	one, two := fmt.Sprintf(`{"id":%q,"data":1}`, id1), fmt.Sprintf(`{"id":%q,"data":2}`, id2)
	answer(pos, one)
	answer(pos, one) // lost: again
	answer(pos, one) // and again
	answer(id1, two)
	answer(id1, two)
	// A plain PUBLISH has no id: answered once, never again.
	s.publish(envelope(`"plain"`, key))
	answer(id2, `{"data":"plain"}`)
	id3 := rsPublish(t, s, key, 3)
	answer(id2, fmt.Sprintf(`{"id":%q,"data":3}`, id3))
	// Another page (new sid) resuming from 1 gets 2 and 3 from the history.
	q := rsOpen(t, s, rsPolling, key, "&since="+id1, nil)
	rsExpect(t, q, id2, 2)
	rsExpect(t, q, id3, 3)
}

// The history no longer reaches back (trimmed to --history-size, an id of
// another epoch, a malformed id, "0" after a trim): {"gap":true} first,
// then every message held; an id over 64 bytes is a bad request.
func TestResumeGapWhenHistoryNoLongerReachesBack(t *testing.T) {
	const key = "rs-gap"
	s := newStack(t, []string{"--history-size", "3", "--poll-timeout", "1s"}, key)
	c := rsOpen(t, s, rsWS, key, "&since=", nil)
	rsPosition(t, c)
	id1 := rsPublish(t, s, key, 1)
	rsExpect(t, c, id1, 1)
	c.close()
	rsWaitGone(t, s, key)
	ids := map[int]string{}
	for n := 2; n <= 6; n++ {
		ids[n] = rsPublish(t, s, key, n)
	}
	otherEpoch := "zzzz" + id1[strings.Index(id1, "."):]
	sixtyFour := strings.Repeat("g", 64)
	for _, since := range []string{id1, otherEpoch, "garbage", "0", sixtyFour} {
		for _, tr := range rsTransports {
			c := rsOpen(t, s, tr, key, "&since="+url.QueryEscape(since), nil)
			if f := rsExpectRaw(t, c, `{"gap":true}`); f.sseID != "" {
				t.Fatalf("gap frame with an id: line %q", f.sseID)
			}
			for n := 4; n <= 6; n++ {
				rsExpect(t, c, ids[n], n)
			}
			c.close()
		}
	}
	// Live delivery goes on after a gap.
	c = rsOpen(t, s, rsWS, key, "&since=garbage", nil)
	rsExpectRaw(t, c, `{"gap":true}`)
	for n := 4; n <= 6; n++ {
		rsExpect(t, c, ids[n], n)
	}
	id7 := rsPublish(t, s, key, 7)
	rsExpect(t, c, id7, 7)
	rsWaitMetric(t, s, metrics.ResumeGap, 16)

	long := strings.Repeat("a", 65)
	if code, _, _ := poll(t, s.httpClientURL(key+"&sid=long&since="+long), nil); code != 400 {
		t.Errorf("poll with a 65-byte since: %d, want 400", code)
	}
	if code, _, _ := do(t, "GET", s.httpClientURL(key+"&since="+long), "", nil, "Accept", "text/event-stream"); code != 400 {
		t.Errorf("EventSource with a 65-byte since: %d, want 400", code)
	}
	if code, _, _ := do(t, "GET", s.httpClientURL(key), "", http.Header{"Last-Event-Id": {long}}, "Accept", "text/event-stream"); code != 400 {
		t.Errorf("EventSource with a 65-byte Last-Event-ID: %d, want 400", code)
	}
	_, err := dial(t, s.url(key+"&since="+long), nil)
	var se ws.StatusError
	if !errors.As(err, &se) || int(se) != 400 {
		t.Errorf("WebSocket handshake with a 65-byte since: %v, want 400", err)
	}
}

// Old clients (no since) get the original frames byte for byte, whether a
// message was published through the durable path or with plain PUBLISH;
// a plain PUBLISH or a broadcast reaches resuming clients too, without id.
func TestResumeOldClientsGetTheOriginalFrames(t *testing.T) {
	const key = "rs-old"
	s := newStack(t, []string{"--poll-timeout", "1s"}, key)
	var old []rsConn
	for _, tr := range rsTransports {
		old = append(old, rsOpen(t, s, tr, key, "&_=1416911718123", nil))
	}
	// A poller is admitted by its first poll (empty: nothing published yet).
	if code, body, _ := old[2].(*rsPollConn).poll(""); code != 200 || body != "" {
		t.Fatalf("first poll: %d %q", code, body)
	}
	res := rsOpen(t, s, rsSSE, key, "&since=", nil)
	rsPosition(t, res)
	rsWaitSessions(t, s, key, 4)

	const data = `{"data":{"a":1.50e2, "b":[1, 2]},"x":"y"}`
	body := `{"recipients":["` + key + `"], "data":{"a":1.50e2, "b":[1, 2]},"x":"y"}`
	var want []string
	s.publish(body) // the original's way first: what old clients have always got
	for _, c := range old {
		f := c.next()
		if f.sseID != "" {
			t.Fatalf("plain PUBLISH: an old client got an id: line %q", f.sseID)
		}
		want = append(want, f.data)
	}
	if f := rsExpectRaw(t, res, want[1]); f.sseID != "" {
		t.Fatalf("plain PUBLISH: a resuming client got an id: line %q", f.sseID)
	}
	a := rsPost(t, s, body, "")
	if a.code != 202 || len(a.IDs) != 1 {
		t.Fatalf("publish: %d %s", a.code, a.raw)
	}
	for i, c := range old {
		if f := c.next(); f.data != want[i] || f.data != data || f.sseID != "" {
			t.Fatalf("%s, durable path: %q (id: %q), want the original %q", rsTransports[i], f.data, f.sseID, want[i])
		}
	}
	if f := rsExpectRaw(t, res, `{"id":"`+a.IDs[0]+`",`+data[1:]); f.sseID != a.IDs[0] {
		t.Fatalf("resuming client: id: line %q", f.sseID)
	}
	// A broadcast belongs to no history: no ids, the original frame for all.
	if a := rsPost(t, s, `{"broadcast":true,"data":"all"}`, ""); a.code != 202 || a.Status != "accepted" || a.IDs != nil || !strings.Contains(a.raw, `"ids":null`) {
		t.Fatalf("broadcast: %d %s", a.code, a.raw)
	}
	for _, c := range append(old, res) {
		if f := c.next(); f.data != `{"data":"all"}` || f.sseID != "" {
			t.Fatalf("broadcast: %q (id: %q)", f.data, f.sseID)
		}
	}
}

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

// Redis without persistence restarts under a connected resuming client:
// its history is gone (a gap may be signalled), but nothing published
// after the restart is lost or given twice.
func TestResumeRedisRestartWithoutPersistence(t *testing.T) {
	const key = "rs-restart"
	s := newStack(t, nil, key)
	c := rsOpen(t, s, rsWS, key, "&since=", nil)
	rsPosition(t, c)
	id1 := rsPublish(t, s, key, 1)
	rsExpect(t, c, id1, 1)

	s.redis.Stop()
	if a := rsPost(t, s, envelope("0", key), ""); a.code != 503 || a.Error != "broker unavailable" || a.hdr.Get("Retry-After") == "" {
		t.Fatalf("publish with Redis down: %d %s", a.code, a.raw)
	}
	s.redis.Start()
	id2 := rsPublishRetrying(t, s, key, 2)
	f := c.next()
	if f.data == `{"gap":true}` { // the history Redis lost: said, not hidden
		f = c.next()
	}
	if want := fmt.Sprintf(`{"id":%q,"data":2}`, id2); f.data != want {
		t.Fatalf("after the restart: %q, want %q", f.data, want)
	}
	id3 := rsPublish(t, s, key, 3)
	rsExpect(t, c, id3, 3) // next in line: 2 came once
	if s.gw.Hub().Live() != 1 {
		t.Fatalf("live = %d: the client was dropped", s.gw.Hub().Live())
	}
	// The new history resumes; an id from before the loss is a gap.
	c2 := rsOpen(t, s, rsSSE, key, "&since="+id2, nil)
	rsExpect(t, c2, id3, 3)
	c3 := rsOpen(t, s, rsWS, key, "&since="+id1, nil)
	rsExpectRaw(t, c3, `{"gap":true}`)
	rsExpect(t, c3, id2, 2)
	rsExpect(t, c3, id3, 3)
}

// Redis with AOF (fsync always) killed and restarted: the history
// survives, so neither the connected client nor one resuming from before
// the outage sees a gap, and nothing is lost or repeated.
func TestResumeRedisRestartDurable(t *testing.T) {
	const key = "rs-durable"
	s := newStackOn(t, testenv.DurableRedis(t), nil, key)
	c := rsOpen(t, s, rsWS, key, "&since=", nil)
	rsPosition(t, c)
	id1 := rsPublish(t, s, key, 1)
	rsExpect(t, c, id1, 1)
	s.redis.Stop()
	s.redis.Start()
	id2 := rsPublishRetrying(t, s, key, 2)
	rsExpect(t, c, id2, 2)
	id3 := rsPublish(t, s, key, 3)
	rsExpect(t, c, id3, 3)
	for _, tr := range rsTransports {
		c := rsOpen(t, s, tr, key, "&since="+id1, nil)
		rsExpect(t, c, id2, 2)
		rsExpect(t, c, id3, 3)
	}
}

// The gateway's subscription is cut while Redis stays up: what backends
// publish meanwhile reaches no one live, and the live resuming client is
// caught up from the history (Resync) without reconnecting, once, in order.
func TestResumeResyncAfterSubscriptionLoss(t *testing.T) {
	const key = "rs-resync"
	s := newStack(t, nil, key)
	c := rsOpen(t, s, rsSSE, key, "&since=", nil)
	rsPosition(t, c)
	ctx := context.Background()
	if err := s.rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for n := 1; n <= 5; n++ {
		v, err := s.rdb.FCall(ctx, "wspubsub_publish", nil, envelope(fmt.Sprint(n), key)).Slice()
		if err != nil || len(v) != 2 {
			t.Fatalf("FCALL: %v %v", v, err)
		}
		ids = append(ids, v[1].(string))
	}
	for i, id := range ids {
		rsExpect(t, c, id, i+1)
	}
	id6 := rsPublish(t, s, key, 6)
	rsExpect(t, c, id6, 6)
	eventually(t, 10*time.Second, "resumes{resync}", func() bool {
		return testutil.ToFloat64(s.gw.Metrics().Resumes.WithLabelValues(metrics.ResumeResync)) >= 1
	})
	if s.gw.Hub().Live() != 1 {
		t.Fatalf("live = %d", s.gw.Hub().Live())
	}
}

// --history-size 0 turns the feature off: since and Last-Event-ID are
// ignored, frames are the original ones, POST /publish answers without ids.
func TestResumeHistoryOff(t *testing.T) {
	const key = "rs-off"
	s := newStack(t, []string{"--history-size", "0"}, key)
	w := rsOpen(t, s, rsWS, key, "&since="+strings.Repeat("a", 100), nil)
	e := rsOpen(t, s, rsSSE, key, "&since=", http.Header{"Last-Event-ID": {"x.1-0"}})
	rsWaitSessions(t, s, key, 2)
	a := rsPost(t, s, envelope("1", key), "k1")
	if a.code != 202 || strings.TrimSpace(a.raw) != `{"status":"accepted"}` {
		t.Fatalf("publish: %d %q", a.code, a.raw)
	}
	rsExpectRaw(t, w, `{"data":1}`)
	if f := rsExpectRaw(t, e, `{"data":1}`); f.sseID != "" {
		t.Fatalf("id: line %q with history off", f.sseID)
	}
	if got := testutil.ToFloat64(s.gw.Metrics().Publishes.WithLabelValues(metrics.PublishLive)); got != 1 {
		t.Errorf("publishes{live} = %v", got)
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

// --history-ttl bounds how long a message is kept (and an idempotency key
// remembered): once it has passed, resuming from before is a gap and the
// same key publishes anew.
func TestResumeHistoryTTL(t *testing.T) {
	const key = "rs-ttl"
	s := newStack(t, []string{"--history-ttl", "1s"}, key)
	a := rsPost(t, s, envelope("1", key), "once")
	if a.code != 202 || a.Status != "accepted" {
		t.Fatalf("publish: %d %s", a.code, a.raw)
	}
	eventually(t, 15*time.Second, "the history to expire", func() bool {
		n, err := s.rdb.Exists(context.Background(), "wspubsub:h:{"+key+"}", "wspubsub:i:{"+key+"}:once").Result()
		return err == nil && n == 0
	})
	c := rsOpen(t, s, rsWS, key, "&since="+a.IDs[0], nil)
	rsExpectRaw(t, c, `{"gap":true}`)
	b := rsPost(t, s, envelope("2", key), "once")
	if b.code != 202 || b.Status != "accepted" || len(b.IDs) != 1 || b.IDs[0] == a.IDs[0] {
		t.Fatalf("the same idempotency key after the TTL: %d %s", b.code, b.raw)
	}
	rsExpect(t, c, b.IDs[0], 2)
}

// A resuming client whose history cannot be read (Redis down) is refused
// with 1013 on every transport, so it retries with the same id and loses
// nothing; an old client needs no history and is admitted.
func TestResumeRefusedWhileHistoryUnavailable(t *testing.T) {
	const key = "rs-down"
	s := newStackOn(t, testenv.DurableRedis(t), []string{"--poll-timeout", "1s"}, key)
	id1 := rsPublish(t, s, key, 1)
	s.redis.Stop()
	w := mustDial(t, s.url(key+"&since="+id1))
	w.expectClose(1013)
	e := rsOpenSSE(t, s.httpClientURL(key+"&since="+id1), nil)
	if f := e.next(); f.event != "close" || !strings.Contains(f.data, `"code":1013`) {
		t.Fatalf("EventSource: %s %q", f.event, f.data)
	}
	code, _, h := poll(t, s.httpClientURL(key+"&sid=down&since="+id1), nil)
	if code != 503 || h.Get("X-Wspubsub-Close-Code") != "1013" || h.Get("Retry-After") == "" {
		t.Fatalf("poll: %d %v", code, h)
	}
	if got := testutil.ToFloat64(s.gw.Metrics().Rejections.WithLabelValues(metrics.RejectHistory)); got != 3 {
		t.Errorf("rejections{history_unavailable} = %v, want 3", got)
	}
	if got := testutil.ToFloat64(s.gw.Metrics().Resumes.WithLabelValues(metrics.ResumeFailed)); got != 3 {
		t.Errorf("resumes{failed} = %v, want 3", got)
	}
	old := mustDial(t, s.url(key))
	rsWaitSessions(t, s, key, 1)
	s.redis.Start()
	s.waitReady()
	// The retry with the same id gets what it would have got (this Redis
	// kept the history: no gap).
	r := rsOpen(t, s, rsWS, key, "&since="+id1, nil)
	id2 := rsPublish(t, s, key, 2)
	rsExpect(t, r, id2, 2)
	old.expect(`{"data":2}`)
}
