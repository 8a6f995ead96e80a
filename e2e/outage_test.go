package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.mongodb.org/mongo-driver/v2/bson"
)

func readyStatus(t *testing.T, s *stack) int {
	t.Helper()
	resp, err := http.Get(s.httpURL("/readyz"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestRedisRestartKeepsClientsAndResumesDelivery(t *testing.T) {
	s := newStack(t, nil, demoKey)
	c := mustDial(t, s.url(demoKey))
	waitLive(t, s, 1)
	s.publish(envelope(`{"n":1}`, demoKey))
	c.expect(`{"data":{"n":1}}`)

	s.redis.Stop()
	eventually(t, 10*time.Second, "readiness false while Redis is down", func() bool { return readyStatus(t, s) == 503 })
	time.Sleep(300 * time.Millisecond) // a few failed reconnects
	s.redis.Start()
	eventually(t, 15*time.Second, "readiness back after Redis restart", func() bool { return readyStatus(t, s) == 200 })

	if s.gw.Hub().Live() != 1 {
		t.Fatalf("client dropped during Redis outage: live=%d", s.gw.Hub().Live())
	}
	s.publish(envelope(`{"n":2}`, demoKey))
	c.expect(`{"data":{"n":2}}`)
	if got := testutil.ToFloat64(s.gw.Metrics().BrokerReconnects); got < 1 {
		t.Fatalf("broker reconnects = %v, want >= 1", got)
	}
	// The client still works both ways.
	c.send("ping")
	c.expect("heartbeat message")
}

func TestMongoDownRejectsNewKeepsExisting(t *testing.T) {
	// Long enough for a lookup on a loaded machine; the outage's refusal
	// waits it out once.
	s := newStack(t, []string{"--key-check-timeout", "3s"}, demoKey)
	c := mustDial(t, s.url(demoKey))
	waitLive(t, s, 1)

	s.mongo.Stop()
	n := mustDial(t, s.url(demoKey))
	n.expectClose(1013)
	if got := testutil.ToFloat64(s.gw.Metrics().Rejections.WithLabelValues("store_unavailable")); got != 1 {
		t.Fatalf("store_unavailable rejections = %v", got)
	}
	if readyStatus(t, s) != 503 {
		t.Fatal("ready while MongoDB is down")
	}
	s.publish(envelope(`{"during":"outage"}`, demoKey))
	c.expect(`{"data":{"during":"outage"}}`)

	s.mongo.Start()
	eventually(t, 20*time.Second, "readiness after MongoDB restart", func() bool { return readyStatus(t, s) == 200 })
	n = mustDial(t, s.url(demoKey))
	waitLive(t, s, 2)
	s.publish(envelope(`{"after":1}`, demoKey))
	c.expect(`{"data":{"after":1}}`)
	n.expect(`{"data":{"after":1}}`)
}

func TestRevokedKeyIsClosedWith4403(t *testing.T) {
	s := newStack(t, []string{"--recheck-interval", "200ms", "--key-check-timeout", "2s"}, demoKey, "stays")
	a, b := mustDial(t, s.url(demoKey)), mustDial(t, s.url("stays"))
	waitLive(t, s, 2)

	// A store outage during re-checks closes nothing.
	// Past the key-check timeout, at least one re-check has failed (a
	// slower machine only makes this check see fewer).
	s.mongo.Stop()
	time.Sleep(3 * time.Second)
	if s.gw.Hub().Live() != 2 {
		t.Fatalf("re-check with the store down closed connections: live=%d", s.gw.Hub().Live())
	}
	s.mongo.Start()

	// The test's own client may first try a pooled connection to the
	// stopped server (EOF): retried, as any client would.
	var err error
	eventually(t, 20*time.Second, "the key deleted", func() bool {
		_, err = s.keys.DeleteOne(context.Background(), bson.D{{Key: "_id", Value: demoKey}})
		return err == nil
	})
	a.expectClose(4403)
	waitLive(t, s, 1)
	s.publish(envelope(`{"still":1}`, "stays"))
	b.expect(`{"data":{"still":1}}`)
	if got := testutil.ToFloat64(s.gw.Metrics().Revocations); got != 1 {
		t.Fatalf("revocations = %v", got)
	}
	if got := testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues("revoked")); got != 1 {
		t.Fatalf("disconnects{revoked} = %v", got)
	}
}
