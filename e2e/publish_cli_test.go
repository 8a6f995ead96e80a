package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestPublishCLIRecordsAndDeduplicates: `wspubsub publish` records in
// history (one FCALL through Redis, or POST /publish), a repeat with the
// same --idempotency-key is acknowledged without a second delivery, and
// --plain is the original's at-most-once PUBLISH.
func TestPublishCLIRecordsAndDeduplicates(t *testing.T) {
	s := newStack(t, nil, demoKey)
	c := mustDial(t, s.url(demoKey+"&since="))
	waitLive(t, s, 1)
	if f, err := c.next(patience); err != nil || !strings.HasPrefix(f, `{"id":"`) {
		t.Fatalf("position frame: %q %v", f, err)
	}
	bin := binary(t)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"publish"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("wspubsub publish %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	viaRedis := []string{"--redis-url", s.redis.URL(), "--to", demoKey, "--idempotency-key", "cli-1", `{"n":1}`}
	if out := run(viaRedis...); !strings.Contains(out, "recorded in history") {
		t.Fatalf("first publish: %s", out)
	}
	if out := run(viaRedis...); !strings.Contains(out, "not delivered again") {
		t.Fatalf("repeat: %s", out)
	}
	viaHTTP := []string{"--gateway", s.httpURL(""), "--to", demoKey, "--idempotency-key", "cli-2", `{"n":2}`}
	if out := run(viaHTTP...); !strings.Contains(out, "recorded in history") {
		t.Fatalf("first POST: %s", out)
	}
	if out := run(viaHTTP...); !strings.Contains(out, "not delivered again") {
		t.Fatalf("repeated POST: %s", out)
	}
	if out := run("--redis-url", s.redis.URL(), "--plain", "--to", demoKey, `{"n":3}`); !strings.Contains(out, "gateway subscriber") {
		t.Fatalf("--plain: %s", out)
	}
	for _, want := range []string{`"data":{"n":1}}`, `"data":{"n":2}}`} {
		f, err := c.next(patience)
		if err != nil || !strings.HasPrefix(f, `{"id":"`) || !strings.HasSuffix(f, want) {
			t.Fatalf("got %q (%v), want a recorded frame ending %s", f, err, want)
		}
	}
	// The plain one comes without id: it is not in the history.
	c.expect(`{"data":{"n":3}}`)
	c.expectNothing(200 * time.Millisecond)
}
