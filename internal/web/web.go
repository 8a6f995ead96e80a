// Package web serves wspubsub's browser side from the binary: the JS client
// (/wspubsub.js as an ES module, /wspubsub.script.js as a classic script),
// the demo page at / (with /favicon.ico) and the live status page (status.go). It must not know
// about the hub or transports: the pages talk to the gateway like any other.
package web

import (
	"embed"
	"encoding/json"
	"net/http"
	"regexp"
)

//go:embed static/index.html static/demo.js static/demo-cli.js static/demo.css static/wspubsub.js
var static embed.FS

// DemoConfig is what the demo page learns from /demo/config.json.
type DemoConfig struct {
	Path    string `json:"path"`    // the client endpoint
	DemoKey string `json:"demoKey"` // prefilled key ("" when not in demo mode)
	Publish bool   `json:"publish"` // show the publish box
	// Broker is "memory" (in-process) or "redis" (--redis-url): the
	// publish box says which carries its messages.
	Broker string `json:"broker"`
}

var exportRE = regexp.MustCompile(`(?m)^export (default .*$)?`)

// ClassicScript turns the ES module into a classic script: the export
// keywords and the default-export line are dropped and the body is wrapped so
// its names stay private (it publishes window.WsPubSub itself).
func ClassicScript(module []byte) []byte {
	body := exportRE.ReplaceAll(module, nil)
	return append(append([]byte("(function () {\n"), body...), []byte("})();\n")...)
}

// Register serves the page, the client and the page's configuration on mux.
func Register(mux *http.ServeMux, cfg DemoConfig) {
	module, _ := static.ReadFile("static/wspubsub.js")
	classic := ClassicScript(module)
	serve := func(path, file, ctype string) {
		data, _ := static.ReadFile("static/" + file)
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", ctype)
			w.Header().Set("Cache-Control", "no-cache")
			_, _ = w.Write(data)
		})
	}
	serve("/{$}", "index.html", "text/html; charset=utf-8")
	serve("/demo.js", "demo.js", "text/javascript; charset=utf-8")
	serve("/demo-cli.js", "demo-cli.js", "text/javascript; charset=utf-8")
	serveFavicon(mux) // favicon.go
	serve("/demo.css", "demo.css", "text/css; charset=utf-8")
	serve("/wspubsub.js", "wspubsub.js", "text/javascript; charset=utf-8")
	mux.HandleFunc("GET /wspubsub.script.js", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(classic)
	})
	cfgJSON, _ := json.Marshal(cfg)
	mux.HandleFunc("GET /demo/config.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(cfgJSON)
	})
}
