package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/gateway"
)

// tokenPage loads wspubsub.js in a page of the gateway's origin and
// connects with the token option: token() hands out window.tokens in
// turn and notes, in window.refreshedAt, when it handed out the second.
const tokenPage = `
window.got = []; window.closedCode = null; window.tokens = %s; window.refreshedAt = 0;
import("/wspubsub.js").then((m) => {
  window.push = new m.WsPubSub("ws://" + location.host + "/websocket", {
    token: async () => { if (window.tokens.length === 1) window.refreshedAt = Date.now(); return window.tokens.shift(); },
    refreshBefore: 60000, websocket: %[2]t, eventsource: %[3]t, polling: %[4]t,
  });
  window.push.onmessage = (e) => window.got.push(e.data);
  window.push.onclose = (e) => { window.closedCode = e.code; };
});
true`

// TestBrowserTokenRefresh: in Chromium, wspubsub.js with token() keeps a
// connection past its first token's exp on every transport — a WebSocket
// by the refresh frame, EventSource and polling by reconnecting with the
// fresh token (resuming) — and the page gets every message once. A Go
// client holding the first token, not refreshed, is the control: its 4403
// says the expiry has been processed before the last message is published.
func TestBrowserTokenRefresh(t *testing.T) {
	for _, transport := range []string{"websocket", "eventsource", "polling"} {
		t.Run(transport, func(t *testing.T) {
			gw, g := startInProcess(t, gateway.Options{}, "--jwt-key", jwtSecret, "--poll-timeout", "5s")
			ctx := browser(t)
			run(t, ctx, 20*time.Second, "a page of the gateway's origin", chromedp.Navigate(g.base+"/healthz"))
			exp := time.Now().Add(4 * time.Second)
			first, fresh := hsToken(t, "page", exp), hsToken(t, "page", time.Now().Add(time.Hour))
			control := mustDial(t, "ws://"+gw.Addr().String()+"/websocket?"+first)
			page := fmt.Sprintf(tokenPage, fmt.Sprintf("[%q, %q]", first, fresh), transport == "websocket", transport == "eventsource", transport == "polling")
			if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](page)); err != nil {
				t.Fatal(err)
			}
			expired := func() bool { return time.Now().Unix() >= exp.Unix() }
			eventually(t, 10*time.Second, "the page's session and the control's (or the first token's expiry)", func() bool {
				return len(gw.Hub().Sessions("page")) == 2 || expired()
			})
			if len(gw.Hub().Sessions("page")) != 2 && expired() {
				t.Skip("this machine took longer than the first token's life to connect; nothing to conclude")
			}
			if err := g.publish(envelope(`{"n":1}`, "page")); err != nil {
				t.Fatal(err)
			}
			eventually(t, 10*time.Second, "message 1 on the page", func() bool {
				n, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`window.got.length`))
				return n >= 1
			})
			// The first token lives 3–4 s; the page refreshes at half its life.
			eventually(t, 10*time.Second, "the page to fetch its fresh token", func() bool {
				at, _ := chromedp.Run(ctx, chromedp.Evaluate[float64](`window.refreshedAt`))
				return at > 0
			})
			at, _ := chromedp.Run(ctx, chromedp.Evaluate[float64](`window.refreshedAt`))
			if int64(at)/1000 >= exp.Unix() {
				t.Skip("this machine took longer than the first token's life to start the page; nothing to conclude")
			}
			control.expectClose(4403)
			if err := g.publish(envelope(`{"n":2}`, "page")); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(patience); ; time.Sleep(20 * time.Millisecond) {
				n, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`window.got.length`))
				if n >= 2 {
					break
				}
				if time.Now().After(deadline) {
					st, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify([window.got, window.closedCode, window.push && window.push.transport, window.push && window.push.readyState, window.tokens])`))
					t.Fatalf("timed out waiting for message 2 on the page: %s", st)
				}
			}
			got, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify([window.got, window.closedCode])`))
			if err != nil {
				t.Fatal(err)
			}
			if want := `[["{\"data\":{\"n\":1}}","{\"data\":{\"n\":2}}"],null]`; got != want {
				t.Fatalf("page got %s, want %s (each message once, in order, never closed)", got, want)
			}
			revoked := testutil.ToFloat64(gw.Metrics().Revocations)
			if transport == "websocket" && revoked != 1 {
				t.Fatalf("revocations %v, want 1 (the control only: the page's WebSocket was refreshed in place)", revoked)
			}
			if len(gw.Hub().Sessions("page")) != 1 {
				t.Fatalf("the page holds %d sessions, want 1", len(gw.Hub().Sessions("page")))
			}
		})
	}
}
