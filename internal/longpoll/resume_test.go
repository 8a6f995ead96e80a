package longpoll

import (
	"testing"

	"github.com/wspubsub/wspubsub/internal/envelope"
	"github.com/wspubsub/wspubsub/internal/session"
)

// resumingPoller is a polling connection of a client that resumed from
// since, with nothing else around it: the polls are calls of next.
func resumingPoller(t *testing.T, since string) *poller {
	t.Helper()
	p := &poller{wake: make(chan struct{}, 1)}
	p.sess = session.New(1, session.Peer{Key: "k", Resume: true, Since: since}, Name, p, 1<<20)
	return p
}

// deliver queues the recorded message id (its data is id too).
func deliver(t *testing.T, p *poller, id string) {
	t.Helper()
	m, ok := session.NewRecorded(id, []byte(`{"data":"`+id+`"}`))
	if !ok || !p.sess.Deliver(m) {
		t.Fatalf("delivering %s", id)
	}
}

// pollSince is next for a poll naming since; it returns the id answered,
// "" for none, "again" when the client is told to resume anew.
func pollSince(p *poller, since string) string {
	after, ok := envelope.ParseID(since)
	m, again := p.next(true, since, after, ok)
	switch {
	case again:
		return "again"
	case m != nil:
		return m.ID
	}
	return ""
}

// A poll the client gave up on can still be held by the server when the
// client's next polls arrive (the server has not yet seen the connection
// close), and be the one woken by the next message: that answer goes
// nowhere. The client's own poll, which names a newer id than the stale
// one did, must get that message — it must not be dropped because the
// stale poll named another since. (The e2e chaos test, with the polls its
// clients give up on made to reach the gateway late, lost single messages
// of polling clients this way.)
func TestStalePollDoesNotLoseTheMessageItTook(t *testing.T) {
	const s0, m1, m2, m3 = "e.5-0", "e.10-0", "e.20-0", "e.30-0"
	p := resumingPoller(t, s0)
	// The client polls since s0 and gives up; that poll (stale from now
	// on) is still held. Its next poll, since s0 again, gets m1.
	deliver(t, p, m1)
	if got := pollSince(p, s0); got != m1 {
		t.Fatalf("poll since s0: %q, want m1", got)
	}
	// The client has m1 and polls since m1: nothing yet.
	if got := pollSince(p, m1); got != "" {
		t.Fatalf("poll since m1: %q, want nothing yet", got)
	}
	// m2 comes and wakes the stale poll (since s0): it takes m2, and
	// writes it to a connection the client has closed.
	deliver(t, p, m2)
	if got := pollSince(p, s0); got != m2 {
		t.Fatalf("stale poll since s0: %q, want m2", got)
	}
	// The client, still at m1, gets m2, then m3.
	deliver(t, p, m3)
	if got := pollSince(p, m1); got != m2 {
		t.Fatalf("poll since m1 after the stale poll took m2: %q, want m2 (m2 lost)", got)
	}
	if got := pollSince(p, m2); got != m3 {
		t.Fatalf("poll since m2: %q, want m3", got)
	}
}

// A stale poll (an older since) arriving while the client's answer is in
// flight is given that answer again and takes nothing from the queue; the
// client's own poll naming the answer it got moves on.
func TestStalePollTakesNothingNewer(t *testing.T) {
	const s0, m1, m2, m3 = "e.5-0", "e.10-0", "e.20-0", "e.30-0"
	p := resumingPoller(t, s0)
	deliver(t, p, m1)
	deliver(t, p, m2)
	if got := pollSince(p, s0); got != m1 {
		t.Fatalf("poll since s0: %q, want m1", got)
	}
	if got := pollSince(p, m1); got != m2 {
		t.Fatalf("poll since m1: %q, want m2", got)
	}
	deliver(t, p, m3)
	// Stale: the client is at m1 or m2 already.
	if got := pollSince(p, s0); got != m2 {
		t.Fatalf("stale poll since s0: %q, want m2 again (the answer in flight)", got)
	}
	if got := pollSince(p, m1); got != m2 {
		t.Fatalf("poll since m1 (the m2 answer lost): %q, want m2", got)
	}
	if got := pollSince(p, m2); got != m3 {
		t.Fatalf("poll since m2: %q, want m3", got)
	}
	// The lost-answer retry of the contract still holds: the same since
	// gets the same answer, a message without id is answered once.
	if got := pollSince(p, m2); got != m3 {
		t.Fatalf("poll since m2 again: %q, want m3 again", got)
	}
	if !p.sess.Deliver(session.NewMessage([]byte(`{"data":"plain"}`))) {
		t.Fatal("delivering a plain message")
	}
	if m, _ := p.next(true, m3, mustID(t, m3), true); m == nil || m.ID != "" {
		t.Fatalf("poll since m3: %v, want the plain message", m)
	}
	if got := pollSince(p, m3); got != "" {
		t.Fatalf("poll since m3 again: %q, want nothing (a plain message is answered once)", got)
	}
}

func mustID(t *testing.T, s string) envelope.ID {
	t.Helper()
	id, ok := envelope.ParseID(s)
	if !ok {
		t.Fatalf("bad id %q", s)
	}
	return id
}

// The position "0" (the key has no history yet) is before every id: a
// client that got it and then message 1 from another gateway moves on
// here, neither given the position again nor message 1 twice. And a poll
// naming "0" lacks every message: one taken by a stale poll since "" (the
// client's first, given up on) is given to it.
func TestInflightComparesWithinOneHistory(t *testing.T) {
	const m1, m2 = "e.10-0", "e.20-0"
	p := resumingPoller(t, "")
	p.sess.Replay(false, "0", nil) // the hub's answer to since="": the position
	if got := pollSince(p, ""); got != "0" {
		t.Fatalf("first poll: %q, want the position 0", got)
	}
	deliver(t, p, m1)
	deliver(t, p, m2)
	// Message 1 came from another gateway.
	if got := pollSince(p, m1); got != m2 {
		t.Fatalf("poll since m1: %q, want m2", got)
	}

	p = resumingPoller(t, "")
	p.sess.Replay(false, "0", nil)
	if got := pollSince(p, ""); got != "0" {
		t.Fatalf("first poll: %q, want the position 0", got)
	}
	if got := pollSince(p, "0"); got != "" {
		t.Fatalf("poll since 0: %q, want nothing yet", got)
	}
	deliver(t, p, m1)
	if got := pollSince(p, ""); got != m1 { // stale
		t.Fatalf("stale poll since \"\": %q, want m1", got)
	}
	if got := pollSince(p, "0"); got != m1 {
		t.Fatalf("poll since 0 after the stale poll took m1: %q, want m1", got)
	}
	// Another life of the history (a gap the client was told of
	// elsewhere): the ids do not compare, and whether the client has the
	// queued message is unknown (an older life's, it would come twice and
	// out of order: e2e TestChaosPollingAcrossLives). It resumes anew.
	deliver(t, p, "f.5-0")
	if got := pollSince(p, "g.1-0"); got != "again" {
		t.Fatalf("poll since another life's id: %q, want to resume anew", got)
	}
}

// A client this connection put in a life of the history, told of a new
// life here (a gap frame, then its messages), moves on: the queue is in
// order after the id it answered last. Only an id of another life that
// this connection did not give makes the client resume anew.
func TestAnotherLifeAfterTheLastAnswer(t *testing.T) {
	p := resumingPoller(t, "e.5-0")
	deliver(t, p, "e.10-0")
	if got := pollSince(p, "e.5-0"); got != "e.10-0" {
		t.Fatalf("poll since e.5-0: %q, want e.10-0", got)
	}
	p.sess.Hold()
	p.sess.Replay(true, "", []*session.Message{recorded(t, "f.1-0")})
	if m, again := p.next(true, "e.10-0", mustID(t, "e.10-0"), true); again || m == nil || string(m.Payload) != string(session.GapFrame) {
		t.Fatalf("poll since e.10-0: %v %v, want the gap frame", m, again)
	}
	if got := pollSince(p, "e.10-0"); got != "f.1-0" {
		t.Fatalf("poll since e.10-0 after the gap: %q, want f.1-0", got)
	}
	deliver(t, p, "f.2-0")
	if got := pollSince(p, "f.1-0"); got != "f.2-0" {
		t.Fatalf("poll since f.1-0: %q, want f.2-0", got)
	}
}

func recorded(t *testing.T, id string) *session.Message {
	t.Helper()
	m, ok := session.NewRecorded(id, []byte(`{"data":"`+id+`"}`))
	if !ok {
		t.Fatalf("bad id %q", id)
	}
	return m
}
