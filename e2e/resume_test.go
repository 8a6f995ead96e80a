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
			if pos := rsPosition(t, c); pos == "0" {
				t.Fatalf("position on an empty history %q, want a real one (epoch and last id)", pos)
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
		for deadline := time.Now().Add(patience); code == 200 && body == "" && time.Now().Before(deadline); {
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

// --history-ttl bounds how long a message is kept (and an idempotency key
// remembered); the key's meta record (epoch and last id, kept
// --history-meta-ttl) outlives it. Issue 8's audit, on every transport:
// a client that had received everything comes back after the TTL without
// a gap (B); a client whose position was told on an empty history comes
// back after a message it never got expired, and is told of the gap (A:
// it used to be position "0", and a silent loss).
func TestResumeHistoryTTL(t *testing.T) {
	const key, empty = "rs-ttl", "rs-ttl-empty"
	s := newStack(t, []string{"--history-ttl", "1s", "--poll-timeout", "1s"}, key, empty)
	expired := func(names ...string) {
		t.Helper()
		eventually(t, 15*time.Second, "the history to expire", func() bool {
			n, err := s.rdb.Exists(context.Background(), names...).Result()
			return err == nil && n == 0
		})
	}

	// B: everything received, back after the TTL on a quiet key.
	c := rsOpen(t, s, rsWS, key, "&since=", nil)
	rsPosition(t, c)
	a := rsPost(t, s, envelope("1", key), "once")
	if a.code != 202 || a.Status != "accepted" {
		t.Fatalf("publish: %d %s", a.code, a.raw)
	}
	rsExpect(t, c, a.IDs[0], 1)
	c.close()
	rsWaitGone(t, s, key)
	expired("wspubsub:h:{"+key+"}", "wspubsub:i:{"+key+"}:once")
	var back []rsConn
	for _, tr := range rsTransports {
		back = append(back, rsOpen(t, s, tr, key, "&since="+url.QueryEscape(a.IDs[0]), nil))
	}
	rsPollEmpty(t, back[2], a.IDs[0]) // admitted, and told no gap
	rsWaitSessions(t, s, key, len(back))
	b := rsPost(t, s, envelope("2", key), "once")
	if b.code != 202 || b.Status != "accepted" || len(b.IDs) != 1 || b.IDs[0] == a.IDs[0] {
		t.Fatalf("the same idempotency key after the TTL: %d %s", b.code, b.raw)
	}
	for _, c := range back {
		rsExpect(t, c, b.IDs[0], 2) // the first frame: no gap before it
		c.close()
	}
	rsWaitMetric(t, s, metrics.ResumeGap, 0)

	// A: a position on an empty history, then a message missed and expired.
	p := rsOpen(t, s, rsWS, empty, "&since=", nil)
	pos := rsPosition(t, p)
	if pos == "0" {
		t.Fatal(`position "0" on an empty history: a later loss could not be told`)
	}
	p.close()
	rsWaitGone(t, s, empty)
	id11 := rsPublish(t, s, empty, 11)
	expired("wspubsub:h:{" + empty + "}")
	var lost, got []rsConn
	for _, tr := range rsTransports {
		lost = append(lost, rsOpen(t, s, tr, empty, "&since="+url.QueryEscape(pos), nil))
		got = append(got, rsOpen(t, s, tr, empty, "&since="+url.QueryEscape(id11), nil))
	}
	for _, c := range lost {
		rsExpectRaw(t, c, `{"gap":true}`)
	}
	rsPollEmpty(t, got[2], id11)
	rsWaitSessions(t, s, empty, len(lost)+len(got))
	id12 := rsPublish(t, s, empty, 12)
	for _, c := range append(lost, got...) {
		rsExpect(t, c, id12, 12)
	}
	rsWaitMetric(t, s, metrics.ResumeGap, 3)
}

// rsPollEmpty polls once, naming since, and expects the empty answer of a
// poll that timed out: the poller is admitted and was given nothing.
func rsPollEmpty(t *testing.T, c rsConn, since string) {
	t.Helper()
	if code, body, _ := c.(*rsPollConn).poll(since); code != 200 || body != "" {
		t.Fatalf("poll since=%s: %d %q, want an empty answer", since, code, body)
	}
}
