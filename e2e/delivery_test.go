package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestDeliveryPassesDataThrough(t *testing.T) {
	s := newStack(t, nil, demoKey)
	c := mustDial(t, s.url(demoKey))
	waitLive(t, s, 1)
	// Numbers are not re-encoded, member order is kept, recipients may come last.
	s.publish(`{"data":{"entry":{"id":"123","n":1.50e2,"z":0,"a":[1, 2]}},"recipients":["` + demoKey + `"]}`)
	c.expect(`{"data":{"entry":{"id":"123","n":1.50e2,"z":0,"a":[1, 2]}}}`)
	// Other members besides data pass through too; recipients in the middle.
	s.publish(`{"type":"x","recipients":["nobody","` + demoKey + `"],"data":null}`)
	c.expect(`{"type":"x","data":null}`)
}

func waitLive(t *testing.T, s *stack, n int) {
	t.Helper()
	eventually(t, 5*time.Second, fmt.Sprintf("%d live connections", n), func() bool { return s.gw.Hub().Live() == n })
}

func TestKeyFromURLForms(t *testing.T) {
	s := newStack(t, nil, demoKey)
	for _, q := range []string{demoKey, "key=" + demoKey, demoKey + "&_=1416911718123", "_=1416911718123&key=" + demoKey} {
		c := mustDial(t, s.url(q))
		c.send("ping")
		c.expect("heartbeat message")
		c.close()
	}
}

func TestUnknownKeyIsClosedWith4401(t *testing.T) {
	s := newStack(t, nil, demoKey)
	for _, q := range []string{"not-a-key", "", "key="} {
		c := mustDial(t, s.url(q))
		c.expectClose(4401)
	}
	if got := testutil.ToFloat64(s.gw.Metrics().Rejections.WithLabelValues("unauthorized")); got != 3 {
		t.Fatalf("unauthorized rejections = %v, want 3", got)
	}
	if s.gw.Hub().Live() != 0 {
		t.Fatal("rejected connection registered")
	}
}

func TestTwoConnectionsPerKey(t *testing.T) {
	s := newStack(t, nil, demoKey, "other")
	a, b := mustDial(t, s.url(demoKey)), mustDial(t, s.url(demoKey))
	o := mustDial(t, s.url("other"))
	waitLive(t, s, 3)
	s.publish(envelope(`{"n":1}`, demoKey))
	a.expect(`{"data":{"n":1}}`)
	b.expect(`{"data":{"n":1}}`)
	a.close()
	waitLive(t, s, 2)
	s.publish(envelope(`{"n":2}`, demoKey, "other"))
	b.expect(`{"data":{"n":2}}`)
	o.expect(`{"data":{"n":2}}`)
}

func TestHeartbeat(t *testing.T) {
	s := newStack(t, nil, demoKey)
	c := mustDial(t, s.url(demoKey))
	c.send("ping")
	c.expect("heartbeat message")
	c.send("something else") // ignored
	c.send("ping")
	c.expect("heartbeat message")
}

func TestThousandMessagesInOrder(t *testing.T) {
	s := newStack(t, nil, demoKey)
	c := mustDial(t, s.url(demoKey))
	waitLive(t, s, 1)
	pipe := s.rdb.Pipeline()
	for i := range 1000 {
		pipe.Publish(context.Background(), "my_channel", envelope(fmt.Sprintf(`{"seq":%d}`, i), demoKey))
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		c.expect(fmt.Sprintf(`{"data":{"seq":%d}}`, i))
	}
}

func TestMalformedMessagesAreDroppedAndCounted(t *testing.T) {
	s := newStack(t, []string{"--max-message-bytes", "1KiB", "--queue-bytes", "1MiB"}, demoKey)
	c := mustDial(t, s.url(demoKey))
	waitLive(t, s, 1)
	bad := map[string]string{
		"invalid_json":   `{"recipients":["` + demoKey + `"],"data":{"entry":{"id”:”123”}}}`,
		"not_object":     `["` + demoKey + `"]`,
		"bad_recipients": `{"recipients":"` + demoKey + `","data":{}}`,
		"no_data":        `{"recipients":["` + demoKey + `"]}`,
		"too_large":      envelope(`"`+string(make([]byte, 2000))+`"`, demoKey),
		"no_recipients":  `{"recipients":[],"data":{}}`,
		"bad_broadcast":  `{"broadcast":false,"data":{}}`,
	}
	bad["too_large"] = envelope(`"`+fmt.Sprintf("%02000d", 0)+`"`, demoKey)
	for _, raw := range bad {
		s.publish(raw)
	}
	s.publish(`{"recipients":[1,2],"data":{}}`)
	s.publish("not json at all")
	s.publish(envelope(`{"ok":true}`, demoKey))
	c.expect(`{"data":{"ok":true}}`)
	for reason := range bad {
		want := 1.0
		if reason == "bad_recipients" || reason == "invalid_json" {
			want = 2
		}
		if got := testutil.ToFloat64(s.gw.Metrics().Drops.WithLabelValues(reason)); got != want {
			t.Errorf("drops{%s} = %v, want %v", reason, got, want)
		}
	}
}

func TestBroadcast(t *testing.T) {
	s := newStack(t, nil, demoKey, "k2")
	a, b := mustDial(t, s.url(demoKey)), mustDial(t, s.url("k2"))
	waitLive(t, s, 2)
	s.publish(`{"broadcast":true,"data":{"all":1}}`)
	a.expect(`{"data":{"all":1}}`)
	b.expect(`{"data":{"all":1}}`)
}

func TestWebSocketProtocolEdges(t *testing.T) {
	s := newStack(t, nil, demoKey)
	c := mustDial(t, s.url(demoKey))
	// A fragmented "ping" is still the heartbeat.
	frames := []ws.Frame{
		ws.MaskFrame(ws.NewFrame(ws.OpText, false, []byte("pi"))),
		ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, []byte("ng"))),
	}
	for _, f := range frames {
		if err := ws.WriteFrame(c.c, f); err != nil {
			t.Fatal(err)
		}
	}
	c.expect("heartbeat message")
	// A client ping is answered with a pong carrying its payload.
	if err := ws.WriteFrame(c.c, ws.MaskFrame(ws.NewPingFrame([]byte("hi")))); err != nil {
		t.Fatal(err)
	}
	_ = c.c.SetReadDeadline(time.Now().Add(patience))
	f, err := ws.ReadFrame(c.r)
	if err != nil || f.Header.OpCode != ws.OpPong || string(f.Payload) != "hi" {
		t.Fatalf("pong: %+v %v", f.Header, err)
	}
	// An unmasked client frame is a protocol error: 1002.
	if err := ws.WriteFrame(c.c, ws.NewTextFrame([]byte("ping"))); err != nil {
		t.Fatal(err)
	}
	c.expectClose(1002)
	waitLive(t, s, 0)
	if got := testutil.ToFloat64(s.gw.Metrics().Disconnects.WithLabelValues("protocol")); got != 1 {
		t.Fatalf("disconnects{protocol} = %v", got)
	}
}

// TestRepeatedRecipientDeliveredOnce: a recipient listed three times,
// once in its JSON-escaped spelling ("\u004b" is "K"), gets the message
// once on each of its connections: the next thing each reads is the
// message published after it.
func TestRepeatedRecipientDeliveredOnce(t *testing.T) {
	s := newStack(t, nil, "Kay")
	a, b := mustDial(t, s.url("Kay")), mustDial(t, s.url("Kay"))
	waitLive(t, s, 2)
	s.publish(`{"recipients":["Kay","\u004bay","Kay"],"data":{"n":1}}`)
	s.publish(envelope(`{"n":2}`, "Kay"))
	for _, c := range []*client{a, b} {
		c.expect(`{"data":{"n":1}}`)
		c.expect(`{"data":{"n":2}}`)
	}
}

// TestInvalidUTF8MessageReachesNobody: a message published through Redis
// with bytes that are not UTF-8 inside its JSON (which would make every
// browser drop its WebSocket) is dropped and counted: it reaches no
// connection and closes none, and the next valid message is delivered.
func TestInvalidUTF8MessageReachesNobody(t *testing.T) {
	s := newStack(t, nil, demoKey, "k2")
	a, b := mustDial(t, s.url(demoKey)), mustDial(t, s.url("k2"))
	waitLive(t, s, 2)
	s.publish("{\"recipients\":[\"" + demoKey + "\"],\"data\":\"\xff\xfe\"}")
	s.publish("{\"broadcast\":true,\"data\":{\"s\":\"caf\xc3\"}}")
	s.publish(envelope(`{"ok":1}`, demoKey, "k2"))
	a.expect(`{"data":{"ok":1}}`)
	b.expect(`{"data":{"ok":1}}`)
	if got := testutil.ToFloat64(s.gw.Metrics().Drops.WithLabelValues("invalid_utf8")); got != 2 {
		t.Fatalf("drops{invalid_utf8} = %v, want 2", got)
	}
	// Both still connected: neither was closed (and none reconnected).
	if s.gw.Hub().Live() != 2 {
		t.Fatalf("live %d after invalid UTF-8, want 2", s.gw.Hub().Live())
	}
}
