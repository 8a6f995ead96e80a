package web

import (
	_ "embed"
	"net/http"
)

// favicon is a 32×32 PNG in an ICO container (every browser reads that),
// 219 bytes: without it every page load logs a 404 in the console.
//
//go:embed static/favicon.ico
var favicon []byte

// serveFavicon serves /favicon.ico, cacheable for a day: it never changes
// within a version.
func serveFavicon(mux *http.ServeMux) {
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "image/x-icon")
		w.Header().Set("Cache-Control", "public, max-age=86400")
		_, _ = w.Write(favicon)
	})
}
