package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// TestBinaryMistypedFlag: a mistyped flag prints the error, the flag it
// most likely meant and where the usage is — not the whole usage — and
// exits 2, in every sub-command.
func TestBinaryMistypedFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--redis", "redis://127.0.0.1:6379"}, "unknown flag --redis; did you mean --redis-url?"},
		{[]string{"serve", "--port", "8088"}, "unknown flag --port; did you mean --listen?"},
		{[]string{"serve", "--idle-timeout", "abc"}, `--idle-timeout "abc": not a duration`},
		{[]string{"publish", "--gatway", "http://127.0.0.1:1", "{}"}, "did you mean --gateway?"},
		{[]string{"presence", "--jsn", "k"}, "did you mean --json?"},
		{[]string{"nodes", "--gateway"}, "flag --gateway needs a value"},
		{[]string{"bench", "--con", "10"}, "did you mean --conns?"},
		{[]string{"config", "--redis", "x"}, "did you mean --redis-url?"},
		{[]string{"keys", "ls", "--keys-fil", "k"}, "did you mean --keys-file?"},
	} {
		r := runCLI(t, nil, tc.args...)
		cmd := "serve"
		if !strings.HasPrefix(tc.args[0], "-") {
			cmd = tc.args[0]
		}
		lines := strings.Count(strings.TrimSpace(r.stderr), "\n") + 1
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) || lines >= 5 ||
			!strings.Contains(r.stderr, "Run 'wspubsub "+cmd+" --help' for usage.") {
			t.Errorf("%q (%d lines): %v", tc.args, lines, r)
		}
	}
	// bench's internal worker flag is not part of its usage; its flags
	// have environment twins.
	r := runCLI(t, nil, "bench", "--help")
	if r.code != 0 || strings.Contains(r.stdout, "worker") || !strings.Contains(r.stdout, "WSPUBSUB_CONNS") {
		t.Errorf("bench --help: %v", r)
	}
	if r := runCLI(t, []string{"WSPUBSUB_CONNS=many"}, "bench"); r.code != 2 || !strings.Contains(r.stderr, "WSPUBSUB_CONNS") {
		t.Errorf("bench with a bad WSPUBSUB_CONNS: %v", r)
	}
}

// TestBinaryConfigCommand: `wspubsub config` shows each setting's value and
// source (flag, env, file:line, default) with secrets hidden; a mistake in
// the file exits 2 naming its line.
func TestBinaryConfigCommand(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "wspubsub.toml")
	writeConfig(t, file, `# staging gateway
listen = "127.0.0.1:7001"
redis-url = "redis://:s3cret-pass@127.0.0.1:6379"
idle-timeout = "2m"
`)
	r := runCLI(t, []string{"WSPUBSUB_PUBLISH_TOKEN=tok-abcdef-123", "WSPUBSUB_CHANNEL=env_channel"},
		"config", "--config", file, "--listen", ":1")
	if r.code != 0 {
		t.Fatalf("config: %v", r)
	}
	for _, want := range []string{
		"\nlisten                  :1  (flag --listen)\n",
		"\nidle-timeout            2m0s  (" + file + ":4)\n",
		"\nredis-url               redis://:xxxxx@127.0.0.1:6379  (" + file + ":3)\n",
		"\npublish-token           <hidden>  (env WSPUBSUB_PUBLISH_TOKEN)\n",
		"\nchannel                 env_channel  (env WSPUBSUB_CHANNEL)\n",
		"\npath                    /websocket  (default)\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("config output lacks %q:\n%s", want, r.stdout)
		}
	}
	for _, secret := range []string{"s3cret-pass", "tok-abcdef-123"} {
		if strings.Contains(r.stdout+r.stderr, secret) {
			t.Errorf("config printed the secret %q", secret)
		}
	}

	// --format toml writes a file that serve takes back.
	r = runCLI(t, nil, "config", "--format", "toml", "--listen", "127.0.0.1:7002", "--keys-file", "/tmp/keys")
	if r.code != 0 || !strings.Contains(r.stdout, "listen = '127.0.0.1:7002'") {
		t.Fatalf("config --format toml: %v", r)
	}
	again := filepath.Join(dir, "again.toml")
	writeConfig(t, again, r.stdout)
	r = runCLI(t, nil, "config", "--config", again)
	if r.code != 0 || !regexp.MustCompile(`(?m)^listen +127\.0\.0\.1:7002  \(`+regexp.QuoteMeta(again)+`:\d+\)$`).MatchString(r.stdout) {
		t.Errorf("the toml output fed back: %v", r)
	}

	// Mistakes: exit 2 with file:line.
	writeConfig(t, file, "listen = \":1\"\n\nredis = \"redis://127.0.0.1:6379\"\nidle-timeout = 5\n")
	r = runCLI(t, nil, "config", "--config", file)
	if r.code != 2 || !strings.Contains(r.stderr, file+`:3: unknown setting "redis"; did you mean "redis-url"?`) ||
		!strings.Contains(r.stderr, file+`:4: idle-timeout: want a duration string`) {
		t.Errorf("bad file: %v", r)
	}
	if r := runCLI(t, nil, "config", "--ping-interval", "2m"); r.code != 2 || !strings.Contains(r.stderr, "--ping-interval") {
		t.Errorf("invalid configuration: %v", r)
	}
	// serve refuses the same file the same way, before starting anything.
	if r := runCLI(t, nil, "serve", "--config", file); r.code != 2 || !strings.Contains(r.stderr, file+":3:") {
		t.Errorf("serve with a bad file: %v", r)
	}
}

// TestBinaryServesFromConfigFile: a gateway started with only --config
// (here through WSPUBSUB_CONFIG too) listens where the file says.
func TestBinaryServesFromConfigFile(t *testing.T) {
	bin := binary(t)
	for _, how := range []string{"flag", "env"} {
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		file := filepath.Join(t.TempDir(), "wspubsub.toml")
		writeConfig(t, file, fmt.Sprintf("# demo gateway on another port\nlisten = %q\nlog-format = \"json\"\n", addr))
		cmd := exec.Command(bin, "--config", file)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "WSPUBSUB_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		if how == "env" {
			cmd = exec.Command(bin)
			cmd.Env = append(cmd.Env, "WSPUBSUB_CONFIG="+file)
		}
		var logs lockedBuffer
		cmd.Stderr = &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill() // if the test fails before the SIGTERM
		eventually(t, 10*time.Second, "gateway up on the file's address ("+how+")", func() bool {
			r, err := http.Get("http://" + addr + "/readyz")
			if err == nil {
				r.Body.Close()
			}
			return err == nil && r.StatusCode == 200
		})
		if !strings.HasPrefix(strings.TrimSpace(logs.String()), "{") {
			t.Errorf("log-format from the file not applied (%s):\n%s", how, logs.String())
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("%s: exit after SIGTERM: %v\n%s", how, err, logs.String())
		}
	}
}

func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}
