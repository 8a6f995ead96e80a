package e2e

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/gateway"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// cutProxy stands between the browser and the gateway so that a test can
// take the browser's network away: cut closes every connection and holds
// new ones (they wait, connected to nothing) until release. While held, the
// page cannot reconnect, so what is published meanwhile can only reach it
// by resuming.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	open   map[net.Conn]struct{}
	gate   chan struct{} // non-nil while new connections are held
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, open: map[net.Conn]struct{}{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.pipe(c)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		p.release()
		p.mu.Lock()
		for c := range p.open {
			_ = c.Close()
		}
		p.mu.Unlock()
	})
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) pipe(c net.Conn) {
	for {
		p.mu.Lock()
		gate := p.gate
		if gate == nil {
			// Registered under the lock that cut takes: no connection slips
			// past a cut.
			p.open[c] = struct{}{}
			p.mu.Unlock()
			break
		}
		p.mu.Unlock()
		<-gate
	}
	defer func() {
		_ = c.Close()
		p.mu.Lock()
		delete(p.open, c)
		p.mu.Unlock()
	}()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done // either side ended: end both
}

// hold makes new connections wait; cut also closes the open ones.
func (p *cutProxy) hold(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gate == nil {
		p.gate = make(chan struct{})
	}
	if cut {
		for c := range p.open {
			_ = c.Close()
		}
	}
}

func (p *cutProxy) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gate != nil {
		close(p.gate)
		p.gate = nil
	}
}

// demoEntries reads the demo page's message list, oldest first: "n<N>" for
// a message {"n":N} (with "@" appended when it carries an id), else the
// notice's kind ("reconnected", "gap").
const demoEntries = `[...document.querySelectorAll("#messages > li")].reverse().map((li) => {
  if (li.classList.contains("notice")) return li.classList.contains("gap") ? "gap" : "reconnected";
  if (!li.classList.contains("message")) return "other";
  try { return "n" + JSON.parse(li.querySelector("pre").textContent).data.n + (li.dataset.id ? "@" : ""); } catch (_) { return "other"; }
})`

// TestBrowserResume: the demo page in a real Chromium, on embedded defaults
// (history in memory), gets message 1, loses its connection, and while it
// cannot reconnect messages 2..5 are published; once it can, it shows 1..5
// exactly once and in order, resumed by wspubsub.js with since=<last id>.
func TestBrowserResume(t *testing.T) {
	cases := []struct {
		name, transport string
		serverClose     bool // the gateway closes (1001, as a deploy), instead of the network going away
		drain           bool // the server's close is a drain's 1012 (wspubsub.js: back soon, same transport)
		args            []string
	}{
		{name: "websocket", transport: "websocket"},
		{name: "websocket-server-close", transport: "websocket", serverClose: true},
		{name: "eventsource", transport: "eventsource"},
		{name: "polling", transport: "polling", args: []string{"--poll-timeout", "5s"}},
		{name: "polling-server-close", transport: "polling", serverClose: true, args: []string{"--poll-timeout", "5s"}},
		{name: "websocket-drain", transport: "websocket", serverClose: true, drain: true},
		{name: "polling-drain", transport: "polling", serverClose: true, drain: true, args: []string{"--poll-timeout", "5s"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			gw, g := startInProcess(t, gateway.Options{}, c.args...)
			proxy := newCutProxy(t, gw.Addr().String())
			ctx := browser(t)
			run(t, ctx, 20*time.Second, "page connects",
				chromedp.Navigate("http://"+proxy.addr()+"/?transports="+c.transport),
				chromedp.WaitVisible(chromedp.CSS(`#state[data-state="open"]`)),
				waitText("#transport", c.transport))
			eventually(t, 10*time.Second, "the page's session", func() bool { return len(gw.Hub().Sessions(demoKey)) == 1 })
			pub := func(n int) {
				t.Helper()
				if err := g.publish(envelope(fmt.Sprintf(`{"n":%d}`, n), demoKey)); err != nil {
					t.Fatal(err)
				}
			}
			pub(1)
			run(t, ctx, 10*time.Second, "message 1", waitText("#messages", `"n": 1`))

			// Chromium keeps idle HTTP connections for the next request:
			// only a WebSocket can be closed by the server alone and be
			// sure to reconnect through a held connection.
			proxy.hold(!c.serverClose || c.transport != "websocket")
			if c.serverClose {
				for _, s := range gw.Hub().Sessions(demoKey) {
					if c.drain {
						s.Close(session.CloseServiceRestart, "service restart")
					} else {
						s.Close(session.CloseGoingAway, "going away")
					}
				}
			}
			// A long-poll connection outlives a lost request (the next
			// poll picks it up), so only the others end here.
			if c.transport != "polling" || c.serverClose {
				eventually(t, 10*time.Second, "the session to end", func() bool { return len(gw.Hub().Sessions(demoKey)) == 0 })
			}
			for n := 2; n <= 5; n++ {
				pub(n) // 202: recorded in the key's history
			}
			proxy.release()
			run(t, ctx, 30*time.Second, "messages 2..5 after the reconnect", waitText("#messages", `"n": 5`))
			// Published after 5 was shown, 6 comes after anything the resume
			// could still send: once 6 is there, the list is final.
			pub(6)
			run(t, ctx, 10*time.Second, "live message 6", waitText("#messages", `"n": 6`))
			screenshot(t, ctx, "demo-resume-"+c.name+".png")

			entries, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](demoEntries))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			reconnectAt := -1
			for _, e := range entries {
				if e == "reconnected" && reconnectAt < 0 {
					reconnectAt = len(got)
				}
				if e != "reconnected" {
					got = append(got, e)
				}
			}
			want := []string{"n1@", "n2@", "n3@", "n4@", "n5@", "n6@"}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("page shows %v, want %v (every message once, in order, with its id)", entries, want)
			}
			// A poll lost with the network may be retried by the browser
			// itself and resume unseen by the page; a stream's loss is seen.
			if c.transport != "polling" {
				if reconnectAt != 1 {
					t.Fatalf("page shows %v: want the reconnect mark between 1 and 2", entries)
				}
			}
			if c.transport != "polling" || c.serverClose {
				// 2..5 could reach it only from the history.
				if got := testutil.ToFloat64(gw.Metrics().Resumes.WithLabelValues(metrics.ResumeComplete)); got != 1 {
					t.Errorf("resumes{complete} = %v, want 1", got)
				}
				if got := testutil.ToFloat64(gw.Metrics().Replayed); got != 4 {
					t.Errorf("replayed = %v, want 4", got)
				}
			}
		})
	}
}

// TestBrowserResumeGap: when the history no longer reaches back to the
// page's last id, the page says so, then shows what the gateway still holds.
func TestBrowserResumeGap(t *testing.T) {
	gw, g := startInProcess(t, gateway.Options{}, "--history-size", "2")
	proxy := newCutProxy(t, gw.Addr().String())
	ctx := browser(t)
	run(t, ctx, 20*time.Second, "page connects",
		chromedp.Navigate("http://"+proxy.addr()+"/?transports=websocket"),
		chromedp.WaitVisible(chromedp.CSS(`#state[data-state="open"]`)))
	eventually(t, 10*time.Second, "the page's session", func() bool { return len(gw.Hub().Sessions(demoKey)) == 1 })
	pub := func(n int) {
		t.Helper()
		if err := g.publish(envelope(`{"n":`+strconv.Itoa(n)+`}`, demoKey)); err != nil {
			t.Fatal(err)
		}
	}
	pub(1)
	run(t, ctx, 10*time.Second, "message 1", waitText("#messages", `"n": 1`))
	proxy.hold(true)
	eventually(t, 10*time.Second, "the session to end", func() bool { return len(gw.Hub().Sessions(demoKey)) == 0 })
	for n := 2; n <= 5; n++ {
		pub(n) // the history keeps 2: 4 and 5
	}
	proxy.release()
	run(t, ctx, 30*time.Second, "gap notice and the held messages",
		waitText("#messages", "Gap:"), waitText("#messages", `"n": 5`))
	pub(6) // once 6 is shown, nothing of the resume is still on its way
	run(t, ctx, 10*time.Second, "live message 6", waitText("#messages", `"n": 6`))
	screenshot(t, ctx, "demo-resume-gap.png")
	entries, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](demoEntries))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"n1@", "reconnected", "gap", "n4@", "n5@", "n6@"}; fmt.Sprint(entries) != fmt.Sprint(want) {
		t.Fatalf("page shows %v, want %v", entries, want)
	}
}
