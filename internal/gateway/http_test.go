package gateway

import (
	"net/http/httptest"
	"testing"

	"github.com/wspubsub/wspubsub/internal/config"
)

// TestKeyFromQuery: the key as sent, and decoded when a bare key holds
// %XX escapes (tried when the key as sent is refused).
func TestKeyFromQuery(t *testing.T) {
	for raw, want := range map[string][2]string{
		"00721b2a-046c-4ecc-a5df-5f808cc6c58f": {"00721b2a-046c-4ecc-a5df-5f808cc6c58f", ""},
		"abc&_=1416911718123":                  {"abc", ""},
		"key=abc&_=1":                          {"abc", ""},
		"_=1416911718123&key=abc":              {"abc", ""},
		"_=1416911718123":                      {"", ""},
		"abc&foo=bar":                          {"abc", ""},
		"key=a%2Fb":                            {"a/b", ""},
		"":                                     {"", ""},
		"x&key=real":                           {"real", ""},
		"a+b":                                  {"a+b", ""}, // the original compared the raw query
		"a%2Bb&_=1":                            {"a%2Bb", "a+b"},
		"pct%41key":                            {"pct%41key", "pctAkey"}, // as sent first: a key stored with its '%'
		"a%20b+c":                              {"a%20b+c", "a b+c"},     // decoded, '+' is still '+'
		"100%":                                 {"100%", ""},             // not an escape: as sent only
		"a%zzb":                                {"a%zzb", ""},
		"key=a+b":                              {"a b", ""}, // a form value, as browsers encode it
		"key=a%2Bb":                            {"a+b", ""},
		"key=pct%41key":                        {"pctAkey", ""},
		"key=&_=1":                             {"", ""}, // an empty key= is the key
	} {
		if key, decoded := KeyFromQuery(raw); key != want[0] || decoded != want[1] {
			t.Errorf("KeyFromQuery(%q) = %q, %q; want %q, %q", raw, key, decoded, want[0], want[1])
		}
	}
}

func TestOriginAndPublishChecks(t *testing.T) {
	g := &Gateway{cfg: config.Serve{AllowedOrigins: []string{"https://app.example.com", "*.corp.example", "localhost:3000"}, PublishToken: "s3cret"}}
	for origin, want := range map[string]bool{
		"":                        true,
		"http://gw.example:8088":  true, // same origin
		"https://app.example.com": true,
		"http://app.example.com":  false,
		"https://x.corp.example":  true,
		"http://localhost:3000":   true,
		"https://evil.example":    false,
		"null":                    false,
	} {
		r := httptest.NewRequest("GET", "http://gw.example:8088/websocket", nil)
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		if got := g.originAllowedFor(r.Header.Get("Origin"), r.Host); got != want {
			t.Errorf("origin %q: %v, want %v", origin, got, want)
		}
	}
	// With --publish-token set, the token is always required, loopback or
	// not (publish_test.go covers the rest).
	for _, c := range []struct {
		remote, auth string
		want         bool
	}{
		{"127.0.0.1:5000", "", false}, {"[::1]:5000", "", false}, {"127.0.0.1:5000", "Bearer s3cret", true},
		{"10.0.0.5:5000", "", false}, {"10.0.0.5:5000", "Bearer wrong", false}, {"10.0.0.5:5000", "Bearer s3cret", true},
	} {
		r := httptest.NewRequest("POST", "/publish", nil)
		r.RemoteAddr = c.remote
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		if got := g.publishAllowed(r); got != c.want {
			t.Errorf("%s %q: %v", c.remote, c.auth, got)
		}
	}
}
