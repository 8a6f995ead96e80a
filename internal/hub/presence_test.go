package hub

import (
	"context"
	"reflect"
	"testing"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/presence"
	"github.com/wspubsub/wspubsub/internal/session"
)

// TestPresenceFollowsAdmitAndLeave: presence is told of admitted sessions
// only, once each, and of their end, over any transport.
func TestPresenceFollowsAdmitAndLeave(t *testing.T) {
	p := presence.NewMemory(presence.Config{NodeID: "n1"})
	h := newHub(t, keystore.NewMemory("good"), nil, func(c *Config) { c.Presence = p })
	s1, _ := admit(t, h, "good", 100)
	s2 := session.New(h.NewID(), session.Peer{Key: "good"}, "polling", &fakeTransport{}, 100)
	if err := h.Admit(context.Background(), s2); err != nil {
		t.Fatal(err)
	}
	if err := h.Admit(context.Background(), session.New(h.NewID(), session.Peer{Key: "bad"}, "test", &fakeTransport{}, 100)); err == nil {
		t.Fatal("bad key admitted")
	}
	lookup := func() map[string][]presence.Entry {
		got, _ := p.Lookup(context.Background(), []string{"good", "bad"})
		return got
	}
	want := map[string][]presence.Entry{"good": {{Node: "n1", Conns: 2, Transports: []string{"polling", "test"}}}}
	if got := lookup(); !reflect.DeepEqual(got, want) {
		t.Fatalf("presence = %+v, want %+v", got, want)
	}
	h.Leave(s1, "client")
	h.Leave(s1, "client") // twice: counted once
	want = map[string][]presence.Entry{"good": {{Node: "n1", Conns: 1, Transports: []string{"polling"}}}}
	if got := lookup(); !reflect.DeepEqual(got, want) {
		t.Fatalf("presence = %+v, want %+v", got, want)
	}
	h.Leave(s2, "idle")
	if got := lookup(); len(got) != 0 {
		t.Fatalf("presence = %+v, want none", got)
	}
}
