package e2e

import (
	"context"
	"fmt"
	"math/rand"
	"slices"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// TestChaosPollingAcrossGateways: a polling client (one sid for its life,
// as wspubsub.js) whose polls alternate between two gateways — a load
// balancer without stickiness — gets each message once: the since of each
// poll, not what the gateway's own session of that client gave before,
// says where it is.
func TestChaosPollingAcrossGateways(t *testing.T) {
	redis := testenv.Redis(t)
	key := "poll-key-0001"
	args := []string{"--redis-url", redis.URL(), "--history-size", "100", "--poll-timeout", "2s"}
	gws := []*chaosGateway{newChaosGateway(t, "gw0", []string{key}, args...), newChaosGateway(t, "gw1", []string{key}, args...)}
	pub := newChaosPublisher(gws, []string{key})
	rng := rand.New(rand.NewSource(1))
	c := newChaosClient(key, chaosPolling, 1)
	pollOnce := func(g *chaosGateway) {
		t.Helper()
		since, _ := c.state()
		c.handle(chaosPollFor(t, g, key, c.sid, since), "")
	}
	pollOnce(gws[0]) // the position
	for n := 1; n <= 6; n++ {
		if err := pub.publishTo(context.Background(), rng, key, n); err != nil {
			t.Fatal(err)
		}
		pollOnce(gws[n%2])
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if want := []int{1, 2, 3, 4, 5, 6}; !slices.Equal(c.log, want) {
		t.Fatalf("received %v, want %v", c.log, want)
	}
}

// TestChaosStalePoll: a poll the client gave up on (its hold ran out, or
// it moved on) can still reach, or still be held by, the gateway after the
// client's next polls — under load the gateway sees the closed connection
// late. Such a poll names an older id than the client's latest, and the
// message it takes goes nowhere: the client's next poll must get that
// message, not the one after it. (TestChaosExactlyOnce, with the polls
// its clients give up on made to reach the gateway late, lost single
// messages of polling clients this way: 15 to 21 a run.) No timing is
// involved: the gateway cannot tell a stale poll from a live one; what
// matters is the order of the polls and their since.
func TestChaosStalePoll(t *testing.T) {
	redis := testenv.Redis(t)
	key := "stale-poll-key"
	g := newChaosGateway(t, "gw0", []string{key}, "--redis-url", redis.URL(), "--history-size", "100", "--poll-timeout", "1s")
	pub := newChaosPublisher([]*chaosGateway{g}, []string{key})
	rng := rand.New(rand.NewSource(1))
	c := newChaosClient(key, chaosPolling, 1)
	poll := func(since string) string {
		t.Helper()
		return chaosPollFor(t, g, key, c.sid, since)
	}
	publish := func(n int) string {
		t.Helper()
		if err := pub.publishTo(context.Background(), rng, key, n); err != nil {
			t.Fatal(err)
		}
		return pub.idOf(n)
	}
	want := func(got string, n int) {
		t.Helper()
		if exp := fmt.Sprintf(`{"id":%q,"data":{"n":%d}}`, pub.idOf(n), n); got != exp {
			t.Fatalf("answered %s, want message %d: %s", chaosShort(got), n, exp)
		}
	}
	c.handle(poll(""), "") // the position
	s0, _ := c.state()
	id1 := publish(1)
	want(poll(s0), 1)
	if got := pollChaos(t, g, key, c.sid, id1); got != "" { // held until the poll timeout: nothing new
		t.Fatalf("poll since message 1: %s, want nothing yet", chaosShort(got))
	}
	publish(2)
	want(poll(s0), 2) // the stale poll: its answer goes nowhere
	publish(3)
	want(poll(id1), 2) // the client, still at message 1
	want(poll(pub.idOf(2)), 3)
}

// TestChaosPollingAcrossLives: a polling client moves from gateway gw0 to
// gw1; its connection on gw0 lingers (until the idle timeout), queueing
// the messages the client gets from gw1. Redis, without persistence, is
// restarted: the key's history starts a new life, which gw1 gives the
// client after a gap frame. When the client polls gw0 again, naming an id
// of the new life, gw0's queue still holds messages of the old one, which
// ids of another life cannot be ordered against: they must not be given
// (TestChaosGapUnderChaos saw them given again, out of order). The client
// may be told to resume (1013); it then gets only what came after its id.
func TestChaosPollingAcrossLives(t *testing.T) {
	redis := testenv.Redis(t)
	key := "lives-poll-key"
	args := []string{"--redis-url", redis.URL(), "--history-size", "100", "--poll-timeout", "1s"}
	gws := []*chaosGateway{newChaosGateway(t, "gw0", []string{key}, args...), newChaosGateway(t, "gw1", []string{key}, args...)}
	pub := newChaosPublisher(gws, []string{key})
	rng := rand.New(rand.NewSource(1))
	c := newChaosClient(key, chaosPolling, 1)
	publish := func(n int) {
		t.Helper()
		if err := pub.publishTo(context.Background(), rng, key, n); err != nil {
			t.Fatal(err)
		}
	}
	// pollUntil polls g until the client has message n, taking every answer
	// (a gap frame, or a close asking it to resume: the next poll is then
	// a new connection); bounded in count, not in time.
	resumed := 0
	pollUntil := func(g *chaosGateway, n int) {
		t.Helper()
		for range 20 {
			if _, last := c.state(); last == n {
				return
			}
			since, _ := c.state()
			code, body, hdr := do(t, "GET", "http://"+g.addr+"/websocket?"+key+"&sid="+c.sid+"&since="+since, "", nil, "X-Socket-Transport", "xhrPolling")
			switch {
			case code == 200 && body != "":
				c.handle(body, "")
			case code == 200:
			case hdr.Get("X-Wspubsub-Close-Code") == "1013":
				resumed++
			default:
				t.Fatalf("poll of %s since %q: %d %q %v", g.name, since, code, body, hdr)
			}
		}
		t.Fatalf("20 polls of %s did not bring message %d: received %v", g.name, n, c.log)
	}

	c.handle(chaosPollFor(t, gws[0], key, c.sid, ""), "") // the position
	publish(1)
	pollUntil(gws[0], 1)
	publish(2)
	pollUntil(gws[1], 2) // gw0's connection lingers, and queues 2 and 3
	publish(3)
	pollUntil(gws[1], 3)

	redis.Stop()
	redis.Start()
	for _, g := range gws {
		g.waitReady(30 * time.Second)
	}
	publish(4) // the history's new life
	pollUntil(gws[1], 4)
	publish(5)
	pollUntil(gws[0], 5)

	c.mu.Lock()
	defer c.mu.Unlock()
	if want := []int{1, 2, 3, chaosGapMark, 4, 5}; !slices.Equal(c.log, want) {
		t.Fatalf("received %v, want %v (%d = the gap frame)", c.log, want, chaosGapMark)
	}
	t.Logf("received %v; told to resume %d times", c.log, resumed)
}

// TestChaosTally checks the chaos test's own arithmetic.
func TestChaosTally(t *testing.T) {
	want := []int{0, 50, 100, 150, 200, 250, 300}
	got := tallyChaos([]int{0, chaosGapMark, 50, 50, 200, 150, 7}, want)
	if exp := (chaosTally{received: 6, lost: 3, duplicated: 1, outOfOrder: 2, gaps: 1, longestGap: 2}); got != exp {
		t.Fatalf("tally %+v, want %+v", got, exp)
	}
	if got := tallyChaos(want, want); got != (chaosTally{received: len(want)}) {
		t.Fatalf("tally of a perfect run %+v", got)
	}
	// Missing messages are skipped only between a gap frame and the next
	// message received (possibly on a later connection); anywhere else they
	// are lost silently. A gap frame with nothing missing is no loss.
	for _, c := range []struct {
		log    []int
		tally  chaosTally
		silent []int
	}{
		{[]int{0, chaosGapMark, 150, 200, chaosGapMark, 300},
			chaosTally{received: 4, lost: 3, skipped: 3, gaps: 2, longestGap: 2}, nil},
		{[]int{0, chaosGapMark, 50, 150, 200, 250, 300},
			chaosTally{received: 6, lost: 1, gaps: 1, longestGap: 1}, []int{100}},
		{[]int{chaosGapMark, chaosGapMark, 100, 150, 200, 250, chaosGapMark},
			chaosTally{received: 4, lost: 3, skipped: 3, gaps: 3, longestGap: 2}, nil},
		{[]int{0, 50, chaosGapMark, 100, 150, 200, 250, 300},
			chaosTally{received: 7, gaps: 1}, nil},
		{[]int{0, chaosGapMark, 100, 100, 50, 150, 200, 250},
			chaosTally{received: 7, lost: 1, duplicated: 1, outOfOrder: 1, gaps: 1, longestGap: 1}, []int{300}},
	} {
		got, silent := tallyChaosSilent(c.log, want)
		if got != c.tally || !slices.Equal(silent, c.silent) {
			t.Errorf("tally of %v: %+v, lost silently %v; want %+v, %v", c.log, got, silent, c.tally, c.silent)
		}
	}
}

// pollChaos is one poll of key's connection sid on g naming since; its
// body ("" when the poll timed out with nothing).
func pollChaos(t *testing.T, g *chaosGateway, key, sid, since string) string {
	t.Helper()
	code, body, hdr := do(t, "GET", "http://"+g.addr+"/websocket?"+key+"&sid="+sid+"&since="+since, "", nil, "X-Socket-Transport", "xhrPolling")
	if code != 200 {
		t.Fatalf("poll of %s since %q: %d %q %v", g.name, since, code, body, hdr)
	}
	return body
}

// chaosPollFor polls, naming the same since again after an empty answer
// (a machine too loaded to deliver within --poll-timeout), until an answer
// comes; bounded in count, not in time.
func chaosPollFor(t *testing.T, g *chaosGateway, key, sid, since string) string {
	t.Helper()
	for range 20 {
		if body := pollChaos(t, g, key, sid, since); body != "" {
			return body
		}
	}
	t.Fatalf("20 polls of %s since %q answered nothing", g.name, since)
	return ""
}
