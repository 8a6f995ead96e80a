package e2e

// Attacks through polling sessions, EventSource streams and client POSTs
// (issue 7, section 2 and the EventSource and '+' findings of section 4),
// and the session caps that hold for every transport.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestHTTPAttackAbandonedPolls: 520 polls with fresh sids, each abandoned
// once admitted, against --max-connections 500 used to fill the gateway
// until --idle-timeout (here 60 s) and lock every new client out with 503.
// Now a session none of whose polls was answered expires within seconds;
// and while they pile up, --max-sessions-per-addr answers 429 / 4429.
func TestHTTPAttackAbandonedPolls(t *testing.T) {
	s := newStack(t, []string{"--max-connections", "500", "--max-sessions-per-addr", "100",
		"--max-sessions-per-key", "0", "--idle-timeout", "60s"}, demoKey, haNormal)
	hc := haHTTPClient(t, "")

	// 520 abandoned sids, spread over 6 forwarded addresses (the peer is a
	// trusted loopback proxy) so that none reaches the per-address cap.
	// One at a time: --max-connections is checked before admission, so
	// concurrent first polls could each pass it (the socket bound, not
	// this, is the hard limit); the point here is expiry.
	var peak atomic.Int64
	sampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			peak.Store(max(peak.Load(), int64(haPollingGauge(s))))
			select {
			case <-sampling:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	admitted, limited := 0, 0
	start := time.Now()
	for i := range 520 {
		hdr := http.Header{"X-Forwarded-For": {fmt.Sprintf("10.0.0.%d", 1+i%6)}}
		code, err := haAbandonPoll(hc, s, demoKey, fmt.Sprintf("abandoned-%d", i), hdr)
		switch {
		case err != nil:
			t.Fatalf("poll %d: %v", i, err)
		case code == 0:
			admitted++
		case code == http.StatusServiceUnavailable:
			limited++
		default:
			t.Fatalf("poll %d: answered %d, want admitted or 503", i, code)
		}
	}
	close(sampling)
	<-sampled
	t.Logf("520 abandoned polls in %v: %d admitted, %d refused 503 (--max-connections 500); at most %d polling connections at once",
		time.Since(start).Round(time.Millisecond), admitted, limited, peak.Load())
	if peak.Load() > 500 {
		t.Fatalf("%d polling connections at once, over --max-connections 500", peak.Load())
	}

	// They expire within seconds (UnpolledTimeout 5 s), not --idle-timeout.
	abandoned := time.Now()
	eventually(t, 15*time.Second, "abandoned polling connections expired", func() bool {
		return haPollingGauge(s) == 0 && s.gw.Hub().Live() == 0
	})
	t.Logf("abandoned polling connections all gone %v after the last was abandoned (--idle-timeout 60s)", time.Since(abandoned).Round(100*time.Millisecond))
	haStillServes(t, s, haNormal, "", "520 abandoned polls")

	// The per-address cap while they pile up: 100 polls held from one
	// address, then that address's next poll, stream or WebSocket gets
	// 429 / 4429; another address is not affected.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	from := http.Header{"X-Forwarded-For": {"10.9.9.9"}}
	held := make(chan haAnswer, 100)
	for i := range 100 {
		go func() { held <- haPoll(ctx, hc, s, demoKey+"&sid=held-"+strconv.Itoa(i), from) }()
	}
	eventually(t, 20*time.Second, "100 held polls admitted", func() bool { return len(s.gw.Hub().Sessions(demoKey)) == 100 })
	limitBefore := haRejections(s, "session_limit")
	for i := range 5 {
		a := haPoll(context.Background(), hc, s, demoKey+"&sid=over-"+strconv.Itoa(i), from)
		if a.err != nil || a.code != http.StatusTooManyRequests || a.hdr.Get("X-Wspubsub-Close-Code") != "4429" {
			t.Fatalf("poll over the per-address cap: %d %v %v, want 429 with close code 4429", a.code, a.hdr, a.err)
		}
	}
	if a := haDo(context.Background(), hc, "GET", s.httpClientURL(demoKey+"&sid=over-es"), "", from, "Accept", "text/event-stream"); a.err != nil ||
		!strings.Contains(a.body, "event: close") || !strings.Contains(a.body, `"code":4429`) {
		t.Fatalf("EventSource over the per-address cap: %d %q %v", a.code, a.body, a.err)
	}
	c, err := haDialWS(s, demoKey, "", from)
	if err != nil {
		t.Fatal(err)
	}
	c.expectClose(4429)
	if got := haRejections(s, "session_limit") - limitBefore; got != 7 {
		t.Fatalf("rejections{session_limit} moved by %v, want 7", got)
	}
	t.Logf("per-address cap: 100 held polls from one address; its next 5 polls 429/4429, its stream and WebSocket 4429")
	haStillServes(t, s, haNormal, "", "the per-address cap was reached")
	cancel() // abandon the 100
	for range 100 {
		<-held
	}
	eventually(t, 15*time.Second, "the 100 abandoned polls expired", func() bool { return haPollingGauge(s) == 0 })
}

// TestHTTPAttackHugeSID: 300 polls with a 1 MB sid took the heap to 709 MB.
// A sid over 64 bytes (or with other characters than [A-Za-z0-9-_.~]) is
// 400; a 1 MB URL is refused by the server's header limit (431) first.
// Bounded: the heap of this process, which runs the gateway, is measured
// (runtime.MemStats.HeapInuse after a GC) before and after.
func TestHTTPAttackHugeSID(t *testing.T) {
	s := newStack(t, nil, demoKey, haNormal)
	hc := haHTTPClient(t, "")
	for _, sid := range []string{strings.Repeat("s", 100), strings.Repeat("s", 65), "a/b", "a%20b", "%C3%A9"} {
		for _, hdr := range [][2]string{{"X-Socket-Transport", "xhrPolling"}, {"Accept", "text/event-stream"}} {
			a := haDo(context.Background(), hc, "GET", s.httpClientURL(demoKey+"&sid="+sid), "", nil, hdr[0], hdr[1])
			if a.err != nil || a.code != http.StatusBadRequest {
				t.Fatalf("sid %q (%s): %d %q %v, want 400", sid, hdr[0], a.code, a.body, a.err)
			}
		}
		if a := haDo(context.Background(), hc, "POST", s.httpClientURL(demoKey+"&sid="+sid), "ping", nil, "Content-Type", "text/plain"); a.code != http.StatusBadRequest {
			t.Fatalf("POST with sid %q: %d, want 400", sid, a.code)
		}
	}
	// 64 bytes is the most a sid may have.
	if code, err := haAbandonPoll(hc, s, demoKey, strings.Repeat("s", 64), nil); err != nil || code != 0 {
		t.Fatalf("poll with a 64-byte sid: %d %v, want admitted", code, err)
	}

	connects := testutil.ToFloat64(s.gw.Metrics().Connects.WithLabelValues("polling"))
	// Half the polls have a 1 MB sid (over the header limit), half a
	// 12 KiB one (within it, so the sid check answers).
	pollWith := func(sidBytes int) []byte {
		return []byte("GET " + s.cfg.Path + "?" + demoKey + "&sid=" + strings.Repeat("x", sidBytes) + " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Socket-Transport: xhrPolling\r\n\r\n")
	}
	huge, large := pollWith(1<<20), pollWith(12<<10)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
		}
	}()
	statuses := map[int]int{}
	var mu sync.Mutex
	work := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range 8 {
		wg.Go(func() {
			for i := range work {
				req := huge
				if i%2 == 1 {
					req = large
				}
				code, err := haRawExchange(s.gw.Addr().String(), req, 20*time.Second)
				mu.Lock()
				if err != nil {
					statuses[-1]++
					t.Errorf("poll with a huge sid: %v", err)
				} else {
					statuses[code]++
				}
				mu.Unlock()
			}
		})
	}
	for i := range 300 {
		work <- i
	}
	close(work)
	wg.Wait()
	close(stop)
	<-sampled
	elapsed := time.Since(start)
	huge, large = nil, nil
	runtime.GC()
	runtime.ReadMemStats(&after)
	growth := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("300 polls with a 1 MB or 12 KiB sid in %v: answers %v; heap in use %.1f MB before, peak %.1f MB (this process: gateway and client), %.1f MB after (%+.1f MB)",
		elapsed.Round(time.Millisecond), statuses, mb(before.HeapInuse), mb(peak.Load()), mb(after.HeapInuse), float64(growth)/(1<<20))
	for code, n := range statuses {
		if code != http.StatusBadRequest && code != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("%d answers %d, want 400 or 431", n, code)
		}
	}
	if statuses[http.StatusBadRequest] < 150 {
		t.Errorf("%d answers 400, want one for each of the 150 polls with a 12 KiB sid", statuses[http.StatusBadRequest])
	}
	if growth > 50<<20 {
		t.Fatalf("heap in use grew by %.1f MB, want under 50 MB", float64(growth)/(1<<20))
	}
	if got := testutil.ToFloat64(s.gw.Metrics().Connects.WithLabelValues("polling")); got != connects {
		t.Fatalf("refused polls opened %v connections", got-connects)
	}
	haStillServes(t, s, haNormal, "", "300 polls with a 1 MB or 12 KiB sid")
}

// TestHTTPAttackPostsOverFreshSIDs: POSTs spread over 100 fresh sids of
// one key used to bypass the client rate limit (1000/1000 accepted). The
// limit is per key: with --client-rate 1 --client-burst 20, at most the
// burst plus one a second are accepted; the rest get 429 / 4029.
func TestHTTPAttackPostsOverFreshSIDs(t *testing.T) {
	s := newStack(t, []string{"--client-rate", "1", "--client-burst", "20", "--max-sessions-per-key", "200",
		"--poll-timeout", "200ms"}, demoKey, haNormal)
	hc := haHTTPClient(t, "")
	// Each sid is first opened by a poll, so its POST finds a connection.
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Go(func() {
			if a := haPoll(context.Background(), hc, s, demoKey+"&sid=post-"+strconv.Itoa(i), nil); a.err != nil || a.code != 200 {
				t.Errorf("opening poll %d: %d %v", i, a.code, a.err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if n := len(s.gw.Hub().Sessions(demoKey)); n != 100 {
		t.Fatalf("%d polling connections, want 100", n)
	}
	accepted, limited := 0, 0
	start := time.Now()
	for i := range 100 {
		a := haDo(context.Background(), hc, "POST", s.httpClientURL(demoKey+"&sid=post-"+strconv.Itoa(i)), "hello "+strconv.Itoa(i), nil,
			"Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
		switch {
		case a.err != nil:
			t.Fatalf("POST %d: %v", i, a.err)
		case a.code == 200:
			accepted++
		case a.code == http.StatusTooManyRequests && a.hdr.Get("X-Wspubsub-Close-Code") == "4029":
			limited++
		default:
			t.Fatalf("POST %d: %d %v %q, want 200 or 429 with close code 4029", i, a.code, a.hdr, a.body)
		}
	}
	elapsed := time.Since(start)
	allowed := 20 + int(elapsed.Seconds()) + 1 // the burst, one a second, one for rounding
	t.Logf("100 POSTs over 100 sids of one key in %v: %d accepted, %d refused 429/4029 (at most %d allowed)", elapsed.Round(time.Millisecond), accepted, limited, allowed)
	if accepted < 20 || accepted > allowed {
		t.Fatalf("%d POSTs accepted, want between the burst (20) and %d", accepted, allowed)
	}
	if got := testutil.ToFloat64(s.gw.Metrics().ClientMessages.WithLabelValues("rate_limited")); int(got) != limited {
		t.Fatalf("client_messages{rate_limited} = %v, want %d", got, limited)
	}
	if got := testutil.ToFloat64(s.gw.Metrics().Connects.WithLabelValues("polling")); got != 100 {
		t.Fatalf("connects{polling} = %v: POSTs must not open connections", got)
	}
	haStillServes(t, s, haNormal, "", "100 POSTs over fresh sids")
}

// TestHTTPAttackPerKeyCap: --max-sessions-per-key (default 16) holds for
// every transport: the 17th connection of a key is refused — WebSocket
// close 4429, EventSource `event: close` with code 4429, poll HTTP 429 —
// and a slot freed is a slot usable again.
func TestHTTPAttackPerKeyCap(t *testing.T) {
	s := newStack(t, []string{"--poll-timeout", "300ms"}, demoKey, haNormal)
	var conns []*client
	for range 16 {
		conns = append(conns, mustDial(t, s.url(demoKey)))
	}
	eventually(t, 10*time.Second, "16 connections of the key", func() bool { return len(s.gw.Hub().Sessions(demoKey)) == 16 })
	mustDial(t, s.url(demoKey)).expectClose(4429)
	typ, data := openSSE(t, s.httpClientURL(demoKey+"&sid=es-17"), nil).next()
	if typ != "close" || !strings.Contains(data, `"code":4429`) {
		t.Fatalf("17th as EventSource: %s %s, want close 4429", typ, data)
	}
	code, _, h := poll(t, s.httpClientURL(demoKey+"&sid=poll-17"), nil)
	if code != http.StatusTooManyRequests || h.Get("X-Wspubsub-Close-Code") != "4429" {
		t.Fatalf("17th as poll: %d %v, want 429 with close code 4429", code, h)
	}
	if got := haRejections(s, "session_limit"); got != 3 {
		t.Fatalf("rejections{session_limit} = %v, want 3", got)
	}
	if got := len(s.gw.Hub().Sessions(demoKey)); got != 16 {
		t.Fatalf("%d sessions of the key, want 16", got)
	}
	conns[0].close()
	eventually(t, 10*time.Second, "a freed slot admits a poll", func() bool {
		code, _, _ := poll(t, s.httpClientURL(demoKey+"&sid=poll-17"), nil)
		return code == 200
	})
	haStillServes(t, s, haNormal, "", "the per-key cap was reached")
}

// TestHTTPAttackSSEBareCR: a bare CR (legal JSON whitespace) in a message
// was sent inside a data: line; EventSource parsers end the line there and
// the client got a truncated message. Every CR, LF and CRLF now starts a
// new data line, so a conforming parser reassembles valid JSON.
func TestHTTPAttackSSEBareCR(t *testing.T) {
	s := newStack(t, nil, demoKey, haNormal)
	c := openSSE(t, s.httpClientURL(demoKey+"&sid=cr"), nil)
	waitLive(t, s, 1)
	for _, sep := range []string{"\r", "\r\n", "\n", "\r\r"} {
		s.publish(`{"recipients":["` + demoKey + `"],"data":{"a":1,` + sep + `"b":2}}`)
		data, raw := haNextEvent(t, c)
		var v struct{ Data struct{ A, B int } }
		if !json.Valid([]byte(data)) || json.Unmarshal([]byte(data), &v) != nil || v.Data.A != 1 || v.Data.B != 2 {
			t.Fatalf("separator %q: a conforming parser reassembles %q (stream %q), want the whole JSON", sep, data, raw)
		}
		t.Logf("separator %q: reassembled %q", sep, data)
	}
	haStillServes(t, s, haNormal, "", "messages with bare CRs")
}

// TestHTTPAttackKeyWithPlus: a raw key containing '+' was decoded as a
// space. The bare query is compared raw ('+' kept); key= is a form value
// (%2B is '+').
func TestHTTPAttackKeyWithPlus(t *testing.T) {
	s := newStack(t, []string{"--poll-timeout", "200ms"}, "a+b")
	raw := mustDial(t, s.url("a+b"))
	form := mustDial(t, s.url("key=a%2Bb"))
	escaped := mustDial(t, s.url("a%2Bb&_=1416911718123"))
	eventually(t, 5*time.Second, "three connections of a+b", func() bool { return len(s.gw.Hub().Sessions("a+b")) == 3 })
	s.publish(envelope(`{"plus":true}`, "a+b"))
	for _, c := range []*client{raw, form, escaped} {
		c.expect(`{"data":{"plus":true}}`)
	}
	if code, _, h := poll(t, s.httpClientURL("a+b&sid=plus"), nil); code != 200 {
		t.Fatalf("poll ?a+b: %d %v", code, h)
	}
	if n := len(s.gw.Hub().Sessions("a+b")); n != 4 {
		t.Fatalf("%d connections of a+b, want 4", n)
	}
	haStillServes(t, s, "a+b", "", "keys with '+'")
}

// TestHTTPAttackKeyWithPercent: a bare key holding %XX escapes was always
// decoded, so a key stored with its '%' (pct%41key) got 4401 where the
// original, comparing the raw query, accepted it. The key as sent is
// tried first, then decoded, so a key stored decoded ("x y", sent as
// x%20y) still gets in — and the refusal of its first spelling is no
// failed key check (one failure allowed here: two of them would spend it).
func TestHTTPAttackKeyWithPercent(t *testing.T) {
	// Each refused spelling spends a unit of the failed-key budget (a key
	// admitted decoded spent one): room for this test's four.
	s := newStack(t, []string{"--poll-timeout", "200ms", "--auth-fail-burst", "10"}, "pct%41key", "x y")
	raw := mustDial(t, s.url("pct%41key"))
	decoded := mustDial(t, s.url("x%20y&_=1416911718123"))
	eventually(t, 5*time.Second, "WebSockets of pct%41key and of x y", func() bool {
		return len(s.gw.Hub().Sessions("pct%41key")) == 1 && len(s.gw.Hub().Sessions("x y")) == 1
	})
	for _, q := range []string{"pct%41key&sid=raw", "x%20y&sid=decoded"} {
		if code, body, h := poll(t, s.httpClientURL(q), nil); code != 200 || body != "" {
			t.Fatalf("poll ?%s: %d %q %v", q, code, body, h)
		}
		// The POST finds its polling connection by the spelling admitted.
		if code, body, _ := post(t, s.httpClientURL(q), "ping", nil); code != 200 || body != "heartbeat message" {
			t.Fatalf("POST ?%s: %d %q", q, code, body)
		}
	}
	if a, b := len(s.gw.Hub().Sessions("pct%41key")), len(s.gw.Hub().Sessions("x y")); a != 2 || b != 2 {
		t.Fatalf("%d connections of pct%%41key and %d of x y, want 2 each", a, b)
	}
	s.publish(envelope(`{"pct":1}`, "pct%41key", "x y"))
	raw.expect(`{"data":{"pct":1}}`)
	decoded.expect(`{"data":{"pct":1}}`)
	for _, reason := range []string{"unauthorized", "throttled"} {
		if got := haRejections(s, reason); got != 0 {
			t.Fatalf("rejections{%s} = %v: a connection admitted in one of its spellings was refused", reason, got)
		}
	}
	haStillServes(t, s, "pct%41key", "", "keys with '%'")
	// Unknown in both spellings: refused, one rejection.
	mustDial(t, s.url("no%41key")).expectClose(4401)
	if got := haRejections(s, "unauthorized"); got != 1 {
		t.Fatalf("rejections{unauthorized} = %v, want 1", got)
	}
}
