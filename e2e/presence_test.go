package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// presenceNode is one gateway process of TestClusterPresence.
type presenceNode struct {
	id, base string
	cmd      *exec.Cmd
	logs     *lockedBuffer
	exited   chan struct{}
}

// startPresenceNode runs the gateway binary as node id on the shared Redis
// (redis: its flags).
func startPresenceNode(t *testing.T, id string, redis []string, keyFile string) *presenceNode {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	n := &presenceNode{id: id, base: "http://" + addr, logs: &lockedBuffer{}, exited: make(chan struct{})}
	n.cmd = exec.Command(binary(t), append([]string{"--listen", addr, "--keys-file", keyFile,
		"--presence", "--node-id", id, "--presence-heartbeat", "1s", "--log-level", "info"}, redis...)...)
	n.cmd.Stderr = n.logs
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = n.cmd.Wait(); close(n.exited) }()
	t.Cleanup(func() {
		_ = n.cmd.Process.Kill()
		<-n.exited
		if t.Failed() {
			t.Logf("%s log:\n%s", id, n.logs.String())
		}
	})
	waitReadyAt(t, addr)
	return n
}

func (n *presenceNode) ws(key string) string {
	return strings.Replace(n.base, "http://", "ws://", 1) + "/websocket?" + key
}

type presenceJSON struct {
	Keys map[string]struct {
		Online bool `json:"online"`
		Conns  int  `json:"conns"`
		Nodes  []struct {
			Node       string   `json:"node"`
			Conns      int      `json:"conns"`
			Transports []string `json:"transports"`
		} `json:"nodes"`
	} `json:"keys"`
}

// summary renders an answer as "key=node:conns:transports|…" lines, sorted
// by key, for comparison.
func (p presenceJSON) summary(keys ...string) string {
	var b strings.Builder
	for _, k := range keys {
		kp := p.Keys[k]
		fmt.Fprintf(&b, "%s(%v,%d)=", k, kp.Online, kp.Conns)
		for _, e := range kp.Nodes {
			fmt.Fprintf(&b, "%s:%d:%s|", e.Node, e.Conns, strings.Join(e.Transports, ","))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// waitPresence polls GET /presence on n until the answer for keys is want
// (a summary), failing after a generous bound.
func waitPresence(t *testing.T, n *presenceNode, want string, keys ...string) {
	t.Helper()
	q := "key=" + strings.Join(keys, "&key=")
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for {
		var p presenceJSON
		err := getJSON(n.base+"/presence?"+q, &p)
		if last = p.summary(keys...); err == nil && last == want {
			return
		}
		if err != nil {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("presence from %s never became\n%s\nlast answer:\n%s", n.id, want, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitNodes(t *testing.T, n *presenceNode, want ...string) {
	t.Helper()
	var last []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ans struct {
			Nodes []struct {
				ID string `json:"id"`
			} `json:"nodes"`
		}
		last = nil
		if err := getJSON(n.base+"/nodes", &ans); err == nil {
			for _, x := range ans.Nodes {
				last = append(last, x.ID)
			}
			if reflect.DeepEqual(last, want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes from %s never became %v; last %v", n.id, want, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestClusterPresence: three gateway processes on one Redis. Presence is
// right from any node while clients come and go over two transports, the
// CLI prints it, and after one gateway is SIGKILLed its entries and its
// registration disappear (within two heartbeats; the test only bounds the
// wait generously).
// On one Redis, and on a 3-master Redis Cluster with per-key routing.
func TestClusterPresence(t *testing.T) {
	t.Run("single", func(t *testing.T) { clusterPresence(t, []string{"--redis-url", testenv.Redis(t).URL()}) })
	t.Run("cluster", func(t *testing.T) {
		clusterPresence(t, []string{"--redis-url", testenv.RedisCluster(t, 3, 0).Seeds(), "--redis-cluster"})
	})
}

func clusterPresence(t *testing.T, redis []string) {
	keyFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keyFile, []byte("k-a\nk-b\nk-c\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g1 := startPresenceNode(t, "gw-1", redis, keyFile)
	g2 := startPresenceNode(t, "gw-2", redis, keyFile)
	g3 := startPresenceNode(t, "gw-3", redis, keyFile)
	for _, g := range []*presenceNode{g1, g2, g3} {
		waitNodes(t, g, "gw-1", "gw-2", "gw-3")
	}

	a1 := mustDial(t, g1.ws("k-a"))
	mustDial(t, g1.ws("k-a"))
	openSSE(t, g2.base+"/websocket?k-a", nil)
	mustDial(t, g3.ws("k-b"))
	c2 := mustDial(t, g2.ws("k-c"))
	keys := []string{"k-a", "k-b", "k-c", "k-none"}
	want := "k-a(true,3)=gw-1:2:websocket|gw-2:1:eventsource|\n" +
		"k-b(true,1)=gw-3:1:websocket|\n" +
		"k-c(true,1)=gw-2:1:websocket|\n" +
		"k-none(false,0)=\n"
	for _, g := range []*presenceNode{g1, g2, g3} {
		waitPresence(t, g, want, keys...)
	}

	// The CLI, table and JSON.
	out, err := exec.Command(binary(t), "presence", "--gateway", g3.base, "k-a", "k-none").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "gw-2") || !strings.Contains(string(out), "eventsource") || !strings.Contains(string(out), "k-none") {
		t.Fatalf("wspubsub presence: %v\n%s", err, out)
	}
	out, err = exec.Command(binary(t), "presence", "--json", "--gateway", g3.base, "k-b").CombinedOutput()
	var pj presenceJSON
	if err != nil || json.Unmarshal(out, &pj) != nil || pj.summary("k-b") != "k-b(true,1)=gw-3:1:websocket|\n" {
		t.Fatalf("wspubsub presence --json: %v\n%s", err, out)
	}
	out, err = exec.Command(binary(t), "nodes", "--gateway", g1.base).CombinedOutput()
	if err != nil || strings.Count(string(out), "gw-") != 3 || !strings.Contains(string(out), strings.TrimPrefix(g2.base, "http://")) {
		t.Fatalf("wspubsub nodes: %v\n%s", err, out)
	}

	// Clients leave.
	a1.close()
	c2.close()
	want = "k-a(true,2)=gw-1:1:websocket|gw-2:1:eventsource|\n" +
		"k-b(true,1)=gw-3:1:websocket|\n" +
		"k-c(false,0)=\n" +
		"k-none(false,0)=\n"
	waitPresence(t, g1, want, keys...)

	// gw-2 is SIGKILLed: no clean-up, its heartbeat stops.
	if err := g2.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-g2.exited
	want = "k-a(true,1)=gw-1:1:websocket|\n" +
		"k-b(true,1)=gw-3:1:websocket|\n" +
		"k-c(false,0)=\n" +
		"k-none(false,0)=\n"
	for _, g := range []*presenceNode{g1, g3} {
		waitPresence(t, g, want, keys...)
		waitNodes(t, g, "gw-1", "gw-3")
	}
}
