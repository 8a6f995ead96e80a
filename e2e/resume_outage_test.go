package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

// Resume through outages: Redis restarts with and without persistence, a
// lost subscription, a history that cannot be read.

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
