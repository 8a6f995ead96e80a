package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// cliResult is one run of the binary.
type cliResult struct {
	stdout, stderr string
	code           int
}

// runCLI runs the built binary with args and env (added to a WSPUBSUB_*-free
// environment) and returns its output and exit status.
func runCLI(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WSPUBSUB_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("running wspubsub %q: %v", args, err)
	}
	return cliResult{out.String(), errOut.String(), cmd.ProcessState.ExitCode()}
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// TestBinaryHelpListsEveryCommand: --help, -h and help print the same
// overview, which names every sub-command; serve --help keeps serve's flags.
func TestBinaryHelpListsEveryCommand(t *testing.T) {
	var first string
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		r := runCLI(t, nil, args...)
		if r.code != 0 {
			t.Fatalf("%q: %v", args, r)
		}
		for _, cmd := range []string{"serve", "publish", "bench", "presence", "nodes", "keys", "config", "version"} {
			if !regexp.MustCompile(`(?m)^  ` + cmd + ` +\S`).MatchString(r.stdout) {
				t.Errorf("%q does not list %s with a description:\n%s", args, cmd, r.stdout)
			}
		}
		if !strings.Contains(r.stdout, "Run 'wspubsub <command> --help' for its flags") {
			t.Errorf("%q: no pointer to the commands' flags:\n%s", args, r.stdout)
		}
		if first == "" {
			first = r.stdout
		} else if r.stdout != first {
			t.Errorf("%q prints another overview than --help", args)
		}
	}
	// The README shows the overview byte for byte.
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "$ wspubsub --help\n"+first+"```") {
		t.Errorf("README.md does not show the current overview after \"$ wspubsub --help\":\n%s", first)
	}
	r := runCLI(t, nil, "serve", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "-redis-url") {
		t.Fatalf("serve --help: %v", r)
	}
	r = runCLI(t, nil, "help", "keys")
	if r.code != 0 || !strings.Contains(r.stdout, "wspubsub keys add") {
		t.Fatalf("help keys: %v", r)
	}
}

func TestBinaryVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"-version"}, {"version"}} {
		r := runCLI(t, nil, args...)
		if r.code != 0 || !regexp.MustCompile(`(?m)^wspubsub \S`).MatchString(r.stdout) ||
			!regexp.MustCompile(`(?m)^go: +go1\.\d+`).MatchString(r.stdout) || !strings.Contains(r.stdout, "revision: ") {
			t.Fatalf("%q: %v", args, r)
		}
	}
	t.Logf("version:\n%s", runCLI(t, nil, "version").stdout)
}

// TestBinaryUsageErrorsExit2: an unknown sub-command or a mistake in the
// keys command's arguments exits 2 with a pointer to the usage; a failure
// at run time exits 1.
func TestBinaryUsageErrorsExit2(t *testing.T) {
	r := runCLI(t, nil, "frobnicate")
	if r.code != 2 || !strings.Contains(r.stderr, `unknown command "frobnicate"`) || !strings.Contains(r.stderr, "wspubsub --help") {
		t.Fatalf("unknown command: %v", r)
	}
	for _, args := range [][]string{
		{"keys", "ls"}, // no store
		{"keys", "ls", "--keys-file", "k", "--mongo-uri", "mongodb://127.0.0.1:1"},
		{"keys", "rm", "--keys-file", "k"},
		{"keys", "frob", "--keys-file", "k"},
		{"version", "extra"},
		{"keys", "ls", "--keys-fil", "k"}, // a mistyped flag
	} {
		r := runCLI(t, nil, args...)
		if r.code != 2 || !strings.Contains(r.stderr, "Run 'wspubsub "+args[0]+" --help' for usage.") {
			t.Errorf("%q: %v", args, r)
		}
	}
	missing := filepath.Join(t.TempDir(), "none.txt")
	if r := runCLI(t, nil, "keys", "ls", "--keys-file", missing); r.code != 1 || !strings.Contains(r.stderr, "none.txt") {
		t.Errorf("ls of a missing file: %v", r)
	}
}

// TestBinaryKeysFileRoundTrip: add, ls and rm on a key file, through the
// flag and through its environment twin; comments survive.
func TestBinaryKeysFileRoundTrip(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys.txt")
	if err := os.WriteFile(file, []byte("# keys of the staging clients\nold-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok := func(r cliResult) cliResult {
		t.Helper()
		if r.code != 0 {
			t.Fatalf("%v", r)
		}
		return r
	}
	ok(runCLI(t, nil, "keys", "add", "--keys-file", file, "k1", "k2"))
	if r := ok(runCLI(t, nil, "keys", "add", "--keys-file", file, "k1")); !strings.Contains(r.stdout, "already") {
		t.Errorf("re-adding says nothing: %v", r)
	}
	gen := ok(runCLI(t, []string{"WSPUBSUB_KEYS_FILE=" + file}, "keys", "add"))
	key := strings.TrimSpace(gen.stdout)
	if !regexp.MustCompile(`^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$`).MatchString(key) {
		t.Fatalf("generated key: %v", gen)
	}
	if r := ok(runCLI(t, nil, "keys", "ls", "--keys-file", file)); r.stdout != "old-key\nk1\nk2\n"+key+"\n" {
		t.Fatalf("ls: %v", r)
	}
	ok(runCLI(t, nil, "keys", "rm", "--keys-file", file, "old-key"))
	if r := runCLI(t, nil, "keys", "rm", "--keys-file", file, "old-key", "k1"); r.code != 1 || !strings.Contains(r.stderr, "old-key is not in") {
		t.Fatalf("rm of a missing key: %v", r)
	}
	data, _ := os.ReadFile(file)
	if want := "# keys of the staging clients\nk2\n" + key + "\n"; string(data) != want {
		t.Fatalf("file:\n%s\nwant:\n%s", data, want)
	}
}

// TestBinaryKeysMongoRoundTrip: the same on MongoDB, and a gateway on that
// MongoDB admits a key added with `wspubsub keys add` and refuses it after
// `wspubsub keys rm`.
func TestBinaryKeysMongoRoundTrip(t *testing.T) {
	s := newStack(t, nil) // no keys yet
	mongoFlags := []string{"--mongo-uri", s.mongo.URL()}
	run := func(want int, args ...string) cliResult {
		t.Helper()
		r := runCLI(t, nil, append(append(args[:2:2], mongoFlags...), args[2:]...)...)
		if r.code != want {
			t.Fatalf("%q: %v", args, r)
		}
		return r
	}
	run(0, "keys", "add", "m1", "m2")
	if r := run(0, "keys", "add", "m1"); !strings.Contains(r.stdout, "already") {
		t.Errorf("re-adding says nothing: %v", r)
	}
	if n, err := s.keys.CountDocuments(context.Background(), bson.D{{Key: "_id", Value: "m1"}}); err != nil || n != 1 {
		t.Fatalf("documents {_id: m1}: %d %v", n, err)
	}
	// The environment twins are serve's: WSPUBSUB_MONGO_URI points both at one store.
	if r := runCLI(t, []string{"WSPUBSUB_MONGO_URI=" + s.mongo.URL()}, "keys", "ls"); r.code != 0 || r.stdout != "m1\nm2\n" {
		t.Fatalf("ls: %v", r)
	}
	c := mustDial(t, s.url("m1"))
	c.send("ping")
	c.expect("heartbeat message")
	run(0, "keys", "rm", "m1")
	run(1, "keys", "rm", "m1")
	mustDial(t, s.url("m1")).expectClose(4401)
	if r := run(0, "keys", "ls"); r.stdout != "m2\n" {
		t.Fatalf("ls after rm: %v", r)
	}
	// Unreachable MongoDB: a failure at run time, exit 1, within --timeout.
	dead := fmt.Sprintf("mongodb://127.0.0.1:%d", testenv.FreePort(t))
	if r := runCLI(t, nil, "keys", "ls", "--mongo-uri", dead, "--timeout", "1s"); r.code != 1 || !strings.Contains(r.stderr, "MongoDB") {
		t.Fatalf("unreachable MongoDB: %v", r)
	}
}

// TestBinaryGatewayPicksUpKeysFileEdits: a gateway on --keys-file admits a
// key added by `wspubsub keys add` once it has re-read the file, and after
// `wspubsub keys rm` refuses new connections with 4401 and closes the live
// one with 4403 at its next re-check.
func TestBinaryGatewayPicksUpKeysFileEdits(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys.txt")
	if r := runCLI(t, nil, "keys", "add", "--keys-file", file, "first"); r.code != 0 {
		t.Fatal(r)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	gw := exec.Command(binary(t), "--listen", addr, "--keys-file", file, "--recheck-interval", "1s",
		"--auth-fail-burst", "100000") // polling with a key not yet known must not be throttled
	var logs lockedBuffer
	gw.Stderr = &logs
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = gw.Process.Kill()
		_ = gw.Wait()
		if t.Failed() {
			t.Logf("gateway log:\n%s", logs.String())
		}
	})
	eventually(t, 20*time.Second, "gateway ready", func() bool {
		r, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == 200
	})
	url := func(key string) string { return "ws://" + addr + "/websocket?" + key }

	r := runCLI(t, nil, "keys", "add", "--keys-file", file)
	key := strings.TrimSpace(r.stdout)
	if r.code != 0 || key == "" {
		t.Fatal(r)
	}
	var live *client
	eventually(t, 30*time.Second, "the added key admitted", func() bool {
		c, code := tryKey(t, url(key))
		live = c
		return code == 0
	})
	if r := runCLI(t, nil, "keys", "rm", "--keys-file", file, key); r.code != 0 {
		t.Fatal(r)
	}
	eventually(t, 30*time.Second, "the removed key refused with 4401", func() bool {
		c, code := tryKey(t, url(key))
		if code == 0 {
			c.close()
		}
		return code == 4401
	})
	live.expectClose(4403)
	if _, code := tryKey(t, url("first")); code != 0 {
		t.Fatalf("the other key: close %d", code)
	}
}

// tryKey connects with key and pings: code 0 and the client when the
// gateway answers (admitted), else the close code it sent.
func tryKey(t *testing.T, url string) (*client, int) {
	t.Helper()
	c := mustDial(t, url)
	_ = wsutil.WriteClientText(c.c, []byte("ping")) // may race the refusal's close
	got, err := c.next(patience)
	var ce *closeError
	switch {
	case errors.As(err, &ce):
		return nil, ce.Code
	case err != nil:
		t.Fatalf("waiting for the gateway's answer: %v", err)
	case got != "heartbeat message":
		t.Fatalf("got %q, want the heartbeat reply", got)
	}
	return c, 0
}

// A --redis-url that does not parse (a password holding '/') is reported
// without the password, by publish as by serve.
func TestBinaryRedisURLErrorHidesThePassword(t *testing.T) {
	const url = "redis://:se/cret@127.0.0.1:1"
	for _, args := range [][]string{
		{"publish", "--redis-url", url, "--to", "k", `{"a":1}`},
		{"serve", "--listen", "127.0.0.1:0", "--redis-url", url},
	} {
		r := runCLI(t, nil, args...)
		if r.code == 0 || strings.Contains(r.stdout+r.stderr, "se/cret") || !strings.Contains(r.stderr, "xxxxx@127.0.0.1:1 is not a valid URL") {
			t.Errorf("%s with an unparseable --redis-url: %v", args[0], r)
		}
	}
}
