package gateway

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/metrics"
)

// post sends client text for key and sid, as bullet's send() does.
func (r *drainRig) post(key, sid, body string) (code int, closeCode, text string) {
	r.t.Helper()
	resp, err := http.Post("http://"+r.addr+"/websocket?"+key+"&sid="+sid, "text/plain", strings.NewReader(body))
	if err != nil {
		r.t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("X-Wspubsub-Close-Code"), string(b)
}

// TestPostedTextNotUTF8Is400With1007: client text POSTed on an
// EventSource or polling connection that is not UTF-8 is refused (400,
// code 1007) rather than repaired and passed on, and ends the connection
// as a WebSocket text frame that is not UTF-8 does: the stream gets its
// close event, the held poll its 400, disconnects{invalid_data} counts
// them. Valid text still gets its answer.
func TestPostedTextNotUTF8Is400With1007(t *testing.T) {
	r := newDrainRig(t, []string{"--upstream-channel", "up"}, "k")

	br := r.openStream("k", "es")
	r.waitLive(1)
	if code, cc, text := r.post("k", "es", "ping"); code != http.StatusOK || cc != "" || text != "heartbeat message" {
		t.Fatalf("POST ping: %d %q %q", code, cc, text)
	}
	if code, cc, text := r.post("k", "es", "a\xffb"); code != http.StatusBadRequest || cc != "1007" || text != "invalid UTF-8" {
		t.Fatalf("POST of invalid UTF-8 on a stream: %d %q %q, want 400 1007", code, cc, text)
	}
	if _, data := streamClose(br); data != `{"code":1007,"reason":"invalid UTF-8"}` {
		t.Fatalf("stream after invalid UTF-8: %s", data)
	}
	r.waitLive(0)

	held := make(chan string, 1)
	go func() {
		code, rest := r.get("/websocket?k&sid=poll", "X-Socket-Transport: xhrPolling")
		held <- strings.Join([]string{http.StatusText(code), rest}, "|")
	}()
	r.waitLive(1)
	if code, cc, _ := r.post("k", "poll", "\xc3("); code != http.StatusBadRequest || cc != "1007" {
		t.Fatalf("POST of invalid UTF-8 on a poll: %d %q, want 400 1007", code, cc)
	}
	select {
	case got := <-held:
		if want := "Bad Request|1007||invalid UTF-8"; got != want {
			t.Fatalf("held poll: %q, want %q", got, want)
		}
	case <-time.After(25 * time.Second):
		t.Fatal("held poll not answered")
	}
	r.waitLive(0)

	if got := testutil.ToFloat64(r.g.metrics.Disconnects.WithLabelValues(metrics.DiscInvalidData)); got != 2 {
		t.Fatalf("disconnects{invalid_data} = %v, want 2", got)
	}
	if got := testutil.ToFloat64(r.g.metrics.ClientMessages.WithLabelValues("upstream")); got != 0 {
		t.Fatalf("client_messages{upstream} = %v: invalid text was passed on", got)
	}
}
