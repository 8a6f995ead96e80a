package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// writeFile writes a configuration file in a fresh directory and returns
// its path.
func writeFile(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "wspubsub.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func usageErr(t *testing.T, err error) string {
	t.Helper()
	var u *UsageError
	if !errors.As(err, &u) {
		t.Fatalf("want a *UsageError, got %T: %v", err, err)
	}
	return err.Error()
}

func TestPrecedenceFlagsEnvFileDefaults(t *testing.T) {
	file := writeFile(t, `# a comment
channel = "file_channel"          # line 2
idle-timeout = "90s"
queue-bytes = "2MiB"
allowed-origins = ["https://a.example", "https://b.example"]
publish-api = false
client-rate = 5
max-connections = 100
event-format = "json"
`)
	e, err := ParseConfig([]string{"--config", file, "--channel", "flag_channel"}, env(map[string]string{
		"WSPUBSUB_CHANNEL":         "env_channel", // the flag wins
		"WSPUBSUB_MAX_CONNECTIONS": "200",         // wins over the file
		"WSPUBSUB_EVENT_FORMAT":    "",            // empty: not set, the file's counts
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := e.Serve
	if c.Channel != "flag_channel" || c.MaxConnections != 200 || c.IdleTimeout != 90*time.Second ||
		c.QueueBytes != 2<<20 || !reflect.DeepEqual(c.AllowedOrigins, []string{"https://a.example", "https://b.example"}) ||
		c.PublishAPI || c.ClientRate != 5 || c.EventFormat != "json" || c.Path != "/websocket" {
		t.Fatalf("got %+v", c)
	}
	for _, tc := range []struct{ name, value, source string }{
		{"channel", "flag_channel", "flag --channel"},
		{"max-connections", "200", "env WSPUBSUB_MAX_CONNECTIONS"},
		{"idle-timeout", "1m30s", file + ":3"},
		{"queue-bytes", "2097152", file + ":4"},
		{"allowed-origins", "https://a.example,https://b.example", file + ":5"},
		{"publish-api", "false", file + ":6"},
		{"event-format", "json", file + ":9"},
		{"path", "/websocket", "default"},
		{"listen", DefaultDemoListen, "default (demo mode: no key store)"},
		{"config", file, "flag --config"},
	} {
		s := find(t, e, tc.name)
		if s.Value != tc.value || s.Source != tc.source {
			t.Errorf("%s: %q from %q, want %q from %q", tc.name, s.Value, s.Source, tc.value, tc.source)
		}
	}
	if s := find(t, e, "format"); s.Name != "" {
		t.Errorf("config's own --format is listed as a setting")
	}
}

func find(t *testing.T, e Effective, name string) Setting {
	for _, s := range e.Settings {
		if s.Name == name {
			return s
		}
	}
	return Setting{}
}

func TestConfigFileThroughEnvAndListen(t *testing.T) {
	file := writeFile(t, "listen = \"127.0.0.1:9999\"\nkeys-file = \"/tmp/keys\"\ntrusted-proxies = []\n")
	c, err := ParseServe(nil, env(map[string]string{"WSPUBSUB_CONFIG": file}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:9999" || c.KeysFile != "/tmp/keys" || len(c.TrustedProxies) != 0 {
		t.Fatalf("got %+v", c)
	}
	// A list as one comma-separated string, as the flag takes it.
	file = writeFile(t, "allowed-hosts = \"a.example, b.example\"\n")
	if c, err = ParseServe([]string{"--config", file}, env(nil), nil); err != nil || len(c.AllowedHosts) != 2 {
		t.Fatalf("%+v %v", c.AllowedHosts, err)
	}
}

func TestFileMistakesNameTheLine(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"\n\n\n\n\n\nredis = \"redis://r:6379\"\n", `wspubsub.toml:7: unknown setting "redis"; did you mean "redis-url"?`},
		{"listen = \":1\"\nport = 8088\n", `wspubsub.toml:2: unknown setting "port"; did you mean "listen"?`},
		{"xyzzy-plugh = 1\n", `wspubsub.toml:1: unknown setting "xyzzy-plugh"` + "\n"},
		{"redis.url = \"x\"\n", `wspubsub.toml:1: unknown setting "redis.url"`},
		{"channel = \"c\"\nidle-timeout = 5\n", `wspubsub.toml:2: idle-timeout: want a duration string such as "30s" or "5m", got the integer 5`},
		{"presence = \"no\"\n", `wspubsub.toml:1: presence: want true or false, got the string "no"`},
		{"max-connections = \"10\"\n", `wspubsub.toml:1: max-connections: want a whole number, got the string "10"`},
		{"allowed-origins = [1, 2]\n", `wspubsub.toml:1: allowed-origins: want an array of strings, got an array`},
		{"channel = 7\n", `wspubsub.toml:1: channel: want a string in quotes, got the integer 7`},
		{"\nqueue-bytes = \"lots\"\n", `wspubsub.toml:2: queue-bytes = "lots": not a byte size`},
		{"\n\nidle-timeout = \"soon\"\n", `wspubsub.toml:3: idle-timeout = "soon": not a duration`},
		{"config = \"other.toml\"\n", `wspubsub.toml:1: "config" cannot be set inside the configuration file`},
		{"channel = \"c\"\n[redis]\nurl = \"x\"\n", `wspubsub.toml:2: section [redis]: settings are top-level keys`},
		{"channel = \"c\"\nlisten: \":1\"\n", `wspubsub.toml:2:`},
		{"channel = \"a\"\nchannel = \"b\"\n", `wspubsub.toml:2:`},
	} {
		file := writeFile(t, tc.text)
		_, err := ParseServe([]string{"--config", file}, env(nil), nil)
		if err == nil {
			t.Errorf("%q accepted", tc.text)
			continue
		}
		msg := strings.ReplaceAll(usageErr(t, err), filepath.Dir(file)+string(filepath.Separator), "")
		if !strings.Contains(msg+"\n", tc.want) {
			t.Errorf("%q:\n got %s\nwant %s", tc.text, msg, tc.want)
		}
	}
	// Every mistake at once, not one per run.
	file := writeFile(t, "redis = 1\nport = 2\n")
	_, err := ParseServe([]string{"--config", file}, env(nil), nil)
	if msg := usageErr(t, err); !strings.Contains(msg, ":1:") || !strings.Contains(msg, ":2:") {
		t.Errorf("not every mistake reported: %s", msg)
	}
	_, err = ParseServe([]string{"--config", filepath.Join(t.TempDir(), "missing.toml")}, env(nil), nil)
	if msg := usageErr(t, err); !strings.Contains(msg, "missing.toml") {
		t.Errorf("missing file: %s", msg)
	}
}

// TestFileValueOverriddenIsStillChecked: a wrong type is reported even
// where a flag wins over it (the file is wrong either way).
func TestFileValueOverriddenIsStillChecked(t *testing.T) {
	file := writeFile(t, "idle-timeout = 5\n")
	_, err := ParseServe([]string{"--config", file, "--idle-timeout", "5s", "--ping-interval", "1s"}, env(nil), nil)
	if msg := usageErr(t, err); !strings.Contains(msg, ":1: idle-timeout") {
		t.Errorf("got %s", msg)
	}
}

func TestUnknownFlagSuggestions(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--redis", "redis://x"}, "unknown flag --redis; did you mean --redis-url?"},
		{[]string{"--port", "8088"}, "unknown flag --port; did you mean --listen?"},
		{[]string{"-bind", ":1"}, "unknown flag --bind; did you mean --listen?"},
		{[]string{"--mongo", "mongodb://x"}, "unknown flag --mongo; did you mean --mongo-uri?"},
		{[]string{"--idle-timout", "5s"}, "unknown flag --idle-timout; did you mean --idle-timeout?"},
		{[]string{"--lisen", ":1"}, "unknown flag --lisen; did you mean --listen?"},
		{[]string{"--idle", "5s"}, "unknown flag --idle; did you mean --idle-timeout?"},
		{[]string{"--Redis_URL", "x"}, "unknown flag --Redis_URL; did you mean --redis-url?"},
		{[]string{"--xyzzy"}, "unknown flag --xyzzy"},
		{[]string{"--idle-timeout", "abc"}, `--idle-timeout "abc": not a duration`},
		{[]string{"--max-connections", "many"}, `--max-connections "many": not a whole number`},
		{[]string{"--presence=maybe"}, `--presence "maybe": not a boolean`},
		{[]string{"--queue-bytes", "lots"}, `--queue-bytes "lots": not a byte size`},
		{[]string{"--listen"}, "flag --listen needs a value"},
		{[]string{"--event-format", "xml"}, `--event-format must be "bare" or "json"`},
		{[]string{"extra"}, "unexpected arguments: extra"},
	} {
		var out strings.Builder
		_, err := ParseServe(tc.args, env(nil), &out)
		if err == nil {
			t.Errorf("%q accepted", tc.args)
			continue
		}
		msg := usageErr(t, err)
		if !strings.HasPrefix(msg, tc.want) || strings.HasPrefix(tc.want, "unknown flag --xyzzy") && msg != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.args, msg, tc.want)
		}
		if out.Len() > 0 {
			t.Errorf("%q printed the usage:\n%s", tc.args, out.String())
		}
	}
	// The other commands' parsers say it the same way.
	_, err := ParsePublish([]string{"--gatway", "http://x", "{}"}, env(nil), nil)
	if msg := usageErr(t, err); msg != "unknown flag --gatway; did you mean --gateway?" {
		t.Errorf("publish: %q", msg)
	}
	_, err = ParseNodes([]string{"--port", "1"}, env(nil), nil)
	if msg := usageErr(t, err); msg != "unknown flag --port" {
		t.Errorf("nodes: %q", msg) // no --listen there: no alias offered
	}
	_, err = ParsePresence([]string{"--jsn"}, env(nil), nil)
	if msg := usageErr(t, err); msg != "unknown flag --jsn; did you mean --json?" {
		t.Errorf("presence: %q", msg)
	}
	_, err = ParsePublish(nil, env(nil), nil)
	usageErr(t, err)
}

func TestHelpStillPrintsTheUsage(t *testing.T) {
	var out strings.Builder
	_, err := ParseServe([]string{"--help"}, env(nil), &out)
	if !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "-config") || !strings.Contains(out.String(), "WSPUBSUB_CONFIG") {
		t.Fatalf("%v\n%s", err, out.String())
	}
	out.Reset()
	_, err = ParseConfig([]string{"-h"}, env(nil), &out)
	if !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "wspubsub config [--format text|toml]") {
		t.Fatalf("%v\n%s", err, out.String())
	}
}

func TestConfigHidesSecrets(t *testing.T) {
	file := writeFile(t, `redis-url = "redis://:redispass@r1:6379,redis://:redispass2@r2:6379"`+"\n")
	e, err := ParseConfig([]string{"--config", file, "--redis-cluster",
		"--mongo-uri", "mongodb://admin:mongopass@db:27017/?authSource=admin&password=qpass"},
		env(map[string]string{"WSPUBSUB_PUBLISH_TOKEN": "tokentokentoken"}), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"text", "toml"} {
		var b strings.Builder
		if format == "text" {
			err = e.WriteText(&b)
		} else {
			err = e.WriteTOML(&b)
		}
		if err != nil {
			t.Fatal(err)
		}
		out := b.String()
		for _, s := range []string{"redispass", "mongopass", "qpass", "tokentokentoken"} {
			if strings.Contains(out, s) {
				t.Errorf("%s output shows the secret %q:\n%s", format, s, out)
			}
		}
		for _, want := range []string{"redis://:xxxxx@r1:6379,redis://:xxxxx@r2:6379", "mongodb://admin:xxxxx@db:27017", "<hidden>", "env WSPUBSUB_PUBLISH_TOKEN"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s output lacks %q:\n%s", format, want, out)
			}
		}
	}
	for name, value := range map[string]string{"jwt-key": "k", "auth-secret": "s", "some-password": "p"} {
		if v, hidden := Conceal(name, value); !hidden || v == value {
			t.Errorf("%s shown: %q", name, v)
		}
	}
	if v, hidden := Conceal("jwt-key", "file:/etc/wspubsub/jwt.pem"); hidden || v != "file:/etc/wspubsub/jwt.pem" {
		t.Errorf("a key file's path is hidden: %q", v)
	}
	if v, _ := Conceal("auth-url", "https://gw:hookpass@auth.example/check"); v != "https://gw:xxxxx@auth.example/check" {
		t.Errorf("auth-url: %q", v)
	}
	if v, hidden := Conceal("listen", "127.0.0.1:8088"); hidden || v != "127.0.0.1:8088" {
		t.Errorf("listen: %q", v)
	}
}

// TestTOMLOutputFeedsBack: `config --format toml` writes a file that, fed
// back as --config, gives the same configuration.
func TestTOMLOutputFeedsBack(t *testing.T) {
	args := []string{"--listen", "127.0.0.1:7000", "--keys-file", "/tmp/k", "--idle-timeout", "2m",
		"--queue-bytes", "3MiB", "--allowed-origins", "https://a.example,https://b.example",
		"--trusted-proxies", "none", "--publish-api=false", "--client-rate", "2.5", "--history-size", "0"}
	e, err := ParseConfig(append([]string{"--format", "toml"}, args...), env(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := e.WriteTOML(&b); err != nil {
		t.Fatal(err)
	}
	file := writeFile(t, b.String())
	got, err := ParseServe([]string{"--config", file}, env(nil), nil)
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	want, _ := ParseServe(args, env(nil), nil)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("fed back:\n got %+v\nwant %+v\nfile:\n%s", got, want, b.String())
	}
}

func TestExportedFlagSet(t *testing.T) {
	fs := NewFlagSet("wspubsub bench", nil)
	var conns int
	var d time.Duration
	fs.Int(&conns, "conns", 1000, "client connections")
	fs.Duration(&d, "duration", time.Second, "length")
	if err := fs.Parse([]string{"--duration", "3s"}, env(map[string]string{"WSPUBSUB_CONNS": "7"})); err != nil {
		t.Fatal(err)
	}
	if conns != 7 || d != 3*time.Second || !fs.IsSet("conns") {
		t.Fatalf("conns %d, duration %v", conns, d)
	}
	err := NewFlagSet("wspubsub bench", nil).Parse([]string{"--con"}, env(nil))
	usageErr(t, err)
}

// A default that is a rule (0: computed) says what it comes to here.
func TestConfigShowsComputedDefaults(t *testing.T) {
	e, err := ParseConfig(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"max-connections": fmt.Sprintf("default: the open-file limit minus 256, %d here", OpenFileLimit()-256),
		"auth-timeout":    "default: --key-check-timeout, 2s",
		"allowed-hosts":   "default (demo mode: localhost, *.localhost, 127.0.0.0/8, ::1)",
		"listen":          "default (demo mode: no key store)",
	}
	for _, s := range e.Settings {
		if w, ok := want[s.Name]; ok && s.Source != w {
			t.Errorf("%s: source %q, want %q", s.Name, s.Source, w)
		}
		if s.Name == "writers" && !strings.HasPrefix(s.Source, "default: half the CPUs") {
			t.Errorf("writers: source %q", s.Source)
		}
	}
	e, err = ParseConfig([]string{"--writers", "3", "--keys-file", "k"}, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range e.Settings {
		if s.Name == "writers" && s.Source != "flag --writers" || s.Name == "allowed-hosts" && s.Source != "default: any host" {
			t.Errorf("%s: source %q", s.Name, s.Source)
		}
	}
}
