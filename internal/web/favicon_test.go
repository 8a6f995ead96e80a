package web

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestFaviconAndDemoConfig(t *testing.T) {
	mux := http.NewServeMux()
	Register(mux, DemoConfig{Path: "/websocket", Publish: true, Broker: "redis"})
	get := func(path string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		return w
	}
	w := get("/favicon.ico")
	if w.Code != 200 || w.Header().Get("Content-Type") != "image/x-icon" || !strings.Contains(w.Header().Get("Cache-Control"), "max-age") ||
		!strings.HasPrefix(w.Body.String(), "\x00\x00\x01\x00") {
		t.Fatalf("/favicon.ico: %d %v", w.Code, w.Header())
	}
	if w := get("/demo/config.json"); !strings.Contains(w.Body.String(), `"broker":"redis"`) {
		t.Fatalf("/demo/config.json: %s", w.Body.String())
	}
	if w := get("/demo-cli.js"); w.Code != 200 || !strings.Contains(w.Body.String(), "export function publishCommand") {
		t.Fatalf("/demo-cli.js: %d", w.Code)
	}
}
