package config

import (
	"io"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaultsAreTheOriginals(t *testing.T) {
	c, err := ParseServe([]string{"--mongo-uri", "mongodb://db:27017"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":8088" || c.Path != "/websocket" || c.Channel != "my_channel" ||
		c.ConnectedChannel != "connected" || c.DisconnectedChannel != "disconnected" ||
		c.MongoDB != "myDB" || c.MongoCollection != "myCollection" || c.MongoKeyField != "_id" ||
		c.IdleTimeout != 60*time.Second || c.RecheckInterval != 5*time.Minute || c.EventFormat != "bare" {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestEnvTwinsAndFlagPrecedence(t *testing.T) {
	c, err := ParseServe([]string{"--channel", "from_flag"}, env(map[string]string{
		"WSPUBSUB_REDIS_URL": "redis://r:1", "WSPUBSUB_CHANNEL": "from_env",
		"WSPUBSUB_QUEUE_BYTES": "2MiB", "WSPUBSUB_ALLOWED_ORIGINS": "a.example, https://b.example",
		"WSPUBSUB_IDLE_TIMEOUT": "90s",
	}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.RedisURL != "redis://r:1" || c.Channel != "from_flag" || c.QueueBytes != 2<<20 ||
		len(c.AllowedOrigins) != 2 || c.AllowedOrigins[1] != "https://b.example" || c.IdleTimeout != 90*time.Second {
		t.Fatalf("got %+v", c)
	}
}

func TestInvalidSettingsAreReported(t *testing.T) {
	for _, args := range [][]string{
		{"--event-format", "xml"},
		{"--path", "websocket"},
		{"--ping-interval", "2m"},
		{"--queue-bytes", "1KiB"},
		{"--log-level", "loud"},
		{"--queue-bytes", "lots"},
		{"extra"},
	} {
		if _, err := ParseServe(args, env(nil), io.Discard); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	_, err := ParseServe(nil, env(map[string]string{"WSPUBSUB_IDLE_TIMEOUT": "soon"}), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "WSPUBSUB_IDLE_TIMEOUT") {
		t.Fatalf("bad env var: %v", err)
	}
}

func TestHelpNamesEnvTwins(t *testing.T) {
	var b strings.Builder
	_, _ = ParseServe([]string{"--help"}, env(nil), &b)
	for _, want := range []string{"WSPUBSUB_LISTEN", "WSPUBSUB_MONGO_URI", "WSPUBSUB_PUBLISH_TOKEN"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("help lacks %s", want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int{"512": 512, "64KiB": 64 << 10, "1 MiB": 1 << 20, "2MB": 2e6} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("%q: %d %v", in, got, err)
		}
	}
}

func TestParsePublish(t *testing.T) {
	c, err := ParsePublish([]string{"--to", "a,b", `{"x":1}`}, env(nil), io.Discard)
	if err != nil || len(c.To) != 2 || c.Message != `{"x":1}` || c.Gateway != "http://127.0.0.1:8088" {
		t.Fatalf("%+v %v", c, err)
	}
	if _, err := ParsePublish([]string{"--to", "a", "--broadcast", "1"}, env(nil), io.Discard); err == nil {
		t.Fatal("--to with --broadcast accepted")
	}
	if _, err := ParsePublish(nil, env(nil), io.Discard); err == nil {
		t.Fatal("no message accepted")
	}
}

// Demo mode (no key store) listens on loopback unless --listen or
// WSPUBSUB_LISTEN says otherwise; with a key store the default is :8088.
func TestDemoModeDefaultListenIsLoopback(t *testing.T) {
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "127.0.0.1:8088"},
		{[]string{"--redis-url", "redis://r:1"}, nil, "127.0.0.1:8088"},
		{[]string{"--listen", ":8088"}, nil, ":8088"},
		{[]string{"--listen", "0.0.0.0:9000"}, nil, "0.0.0.0:9000"},
		{nil, map[string]string{"WSPUBSUB_LISTEN": ":9001"}, ":9001"},
		{[]string{"--keys-file", "keys.txt"}, nil, ":8088"},
		{nil, map[string]string{"WSPUBSUB_MONGO_URI": "mongodb://db:27017"}, ":8088"},
	} {
		got, err := ParseServe(c.args, env(c.env), io.Discard)
		if err != nil {
			t.Fatalf("%v %v: %v", c.args, c.env, err)
		}
		if got.Listen != c.want {
			t.Errorf("%v %v: listen %q, want %q", c.args, c.env, got.Listen, c.want)
		}
	}
}

func TestDebugAddrMustBeLoopbackUnlessPublic(t *testing.T) {
	for args, ok := range map[string]bool{
		"--debug-addr 127.0.0.1:6060":                     true,
		"--debug-addr localhost:6060":                     true,
		"--debug-addr [::1]:6060":                         true,
		"--debug-addr 0.0.0.0:6060":                       false,
		"--debug-addr :6060":                              false,
		"--debug-addr 10.1.2.3:6060":                      false,
		"--debug-addr pprof.example.com:6060":             false,
		"--debug-addr 127.0.0.1":                          false,
		"--debug-addr 0.0.0.0:6060 --debug-addr-public":   true,
		"--debug-addr :6060 --debug-addr-public":          true,
		"--debug-addr 127.0.0.1:6060 --debug-addr-public": true,
	} {
		_, err := ParseServe(strings.Fields(args), env(nil), io.Discard)
		if (err == nil) != ok {
			t.Errorf("%s: err %v, want ok=%v", args, err, ok)
		}
	}
	if _, err := ParseServe([]string{"--debug-addr", "0.0.0.0:6060"}, env(map[string]string{"WSPUBSUB_DEBUG_ADDR_PUBLIC": "true"}), io.Discard); err != nil {
		t.Errorf("WSPUBSUB_DEBUG_ADDR_PUBLIC: %v", err)
	}
}

func TestAllowedHostsAreValidated(t *testing.T) {
	c, err := ParseServe(nil, env(map[string]string{"WSPUBSUB_ALLOWED_HOSTS": "push.example.com, *.example.net,10.0.0.0/8,::1,[::1],127.0.0.1,*"}), io.Discard)
	if err != nil || len(c.AllowedHosts) != 7 {
		t.Fatalf("%v %v", c.AllowedHosts, err)
	}
	for _, bad := range []string{"http://push.example.com", "push.example.com:8088", "10.0.0.0/33", "a b", "*.*"} {
		if _, err := ParseServe([]string{"--allowed-hosts", bad}, env(nil), io.Discard); err == nil {
			t.Errorf("--allowed-hosts %q accepted", bad)
		}
	}
}

func TestIsLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "LOCALHOST:8088": true, "localhost.": true, "app.localhost": true, "a.b.localhost:1": true,
		"127.0.0.1": true, "127.0.0.1:8088": true, "127.9.9.9": true, "::1": true, "[::1]": true, "[::1]:8088": true,
		"": false, "0.0.0.0": false, "10.0.0.1:80": false, "localhost.evil.example": false, "evillocalhost": false,
		"rebind.evil.example": false, "[::]:80": false, "::ffff:127.0.0.1": true,
	} {
		if got := IsLoopbackHost(host); got != want {
			t.Errorf("IsLoopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}
