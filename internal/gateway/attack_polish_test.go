package gateway

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/config"
)

// The start-up line of a JWKS store showed --jwks-url whole, credentials
// (user info, a query token) included.
func TestJWKSStartLineHidesURLCredentials(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{"keys":[]}`))
	}))
	defer srv.Close()
	var logs bytes.Buffer
	cfg := config.Serve{KeyCheckTimeout: time.Minute} // the JWKS fetch at start must not time out
	cfg.JWKSURL = strings.Replace(srv.URL, "http://", "http://idpuser:idpp4ss@", 1) + "/jwks?access_token=t0ken"
	ks, err := newTokenStore(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ks.Close(context.Background()) }()
	if !strings.Contains(logs.String(), "JWKS") {
		t.Fatalf("no start-up line: %s", logs.String())
	}
	for _, s := range []string{"idpp4ss", "t0ken"} {
		if strings.Contains(logs.String(), s) {
			t.Fatalf("log shows %q: %s", s, logs.String())
		}
	}
}
