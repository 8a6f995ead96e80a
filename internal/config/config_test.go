package config

import (
	"io"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaultsAreTheOriginals(t *testing.T) {
	c, err := ParseServe(nil, env(nil), io.Discard)
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
