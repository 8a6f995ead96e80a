package web

import (
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// The status page must work where nothing else is reachable: every
// resource it loads comes from the gateway itself.
func TestStatusPageIsSelfContained(t *testing.T) {
	h := StatusHandler()
	external := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|url\(`)
	for _, path := range StatusPaths() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		body := w.Body.String()
		if w.Code != 200 || len(body) < 100 {
			t.Fatalf("%s: %d, %d bytes", path, w.Code, len(body))
		}
		if m := external.FindString(body); m != "" {
			t.Errorf("%s refers to something outside the gateway: %q", path, m)
		}
		if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("%s: CSP %q", path, csp)
		}
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/status.txt", nil))
	if w.Code != 404 {
		t.Errorf("/status.txt: %d, want 404", w.Code)
	}
}
