package web

import (
	"embed"
	"net/http"
)

//go:embed static/status.html static/status.js static/status.css
var statusFS embed.FS

// StatusPaths are the URL paths of the live status page and its assets;
// the gateway serves each through StatusHandler behind its /metrics guard.
func StatusPaths() []string { return []string{"/status", "/status.js", "/status.css"} }

// StatusHandler serves the status page (/status) and its script and style
// from the binary: no external resource, so it works where no CDN is
// reachable. The page reads its data from /status.json, which the gateway
// serves. Its Content-Security-Policy allows nothing but this origin.
func StatusHandler() http.Handler {
	type file struct {
		data  []byte
		ctype string
	}
	files := map[string]file{}
	for path, f := range map[string]file{ // content types spelled out: the system's MIME table may differ
		"/status":     {ctype: "text/html; charset=utf-8"},
		"/status.js":  {ctype: "text/javascript; charset=utf-8"},
		"/status.css": {ctype: "text/css; charset=utf-8"},
	} {
		name := "static/status.html"
		if path != "/status" {
			name = "static" + path
		}
		f.data, _ = statusFS.ReadFile(name)
		files[path] = f
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Type", f.ctype)
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(f.data)
	})
}
