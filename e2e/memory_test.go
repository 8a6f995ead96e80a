package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// BenchmarkIdleConnectionMemory is a first, rough reading of gateway memory
// per idle authenticated WebSocket connection: it starts the gateway binary
// with a key file, opens WSPUBSUB_IDLE_CONNS connections (default 2000) and
// reports the growth of the gateway's RSS divided by their number. The load
// tool of a later issue measures this properly at 18,000 connections.
//
//	go test ./e2e -run '^$' -bench IdleConnectionMemory -benchtime 1x
func BenchmarkIdleConnectionMemory(b *testing.B) {
	n := 2000
	if v, err := strconv.Atoi(os.Getenv("WSPUBSUB_IDLE_CONNS")); err == nil && v > 0 {
		n = v
	}
	dir := b.TempDir()
	var keys strings.Builder
	for i := range n {
		fmt.Fprintf(&keys, "key-%d\n", i)
	}
	keyFile := filepath.Join(dir, "keys")
	if err := os.WriteFile(keyFile, []byte(keys.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(b))
	cmd := exec.Command(binaryB(b), "--listen", addr, "--keys-file", keyFile, "--log-level", "warn", "--max-sessions-per-addr", "0")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	eventually(b, 10*time.Second, "gateway up", func() bool {
		r, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			r.Body.Close()
		}
		return err == nil
	})
	for b.Loop() {
		before := rssKB(b, cmd.Process.Pid)
		conns := make([]net.Conn, 0, n)
		start := time.Now()
		for i := range n {
			c, _, _, err := ws.Dial(context.Background(), fmt.Sprintf("ws://%s/websocket?key-%d", addr, i))
			if err != nil {
				b.Fatalf("connection %d: %v", i, err)
			}
			conns = append(conns, c)
		}
		elapsed := time.Since(start)
		eventually(b, 30*time.Second, "all admitted", func() bool {
			return metricValue(b, "http://"+addr, `wspubsub_connections{transport="websocket"}`) == float64(n)
		})
		time.Sleep(2 * time.Second) // let the GC settle
		after := rssKB(b, cmd.Process.Pid)
		b.ReportMetric(float64(after-before)*1024/float64(n), "B/conn")
		b.ReportMetric(float64(n)/elapsed.Seconds(), "conns/s")
		b.Logf("%d connections: RSS %d KiB -> %d KiB; gateway stacks %.0f KiB, heap %.0f KiB", n, before, after,
			metricValue(b, "http://"+addr, "go_memstats_stack_inuse_bytes")/1024, metricValue(b, "http://"+addr, "go_memstats_heap_inuse_bytes")/1024)
		for _, c := range conns {
			c.Close()
		}
	}
}

// procRSSKB returns a process's resident set size in KiB.
func procRSSKB(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
		}
	}
	return 0, errors.New("no VmRSS")
}

func rssKB(b *testing.B, pid int) int {
	kb, err := procRSSKB(pid)
	if err != nil {
		b.Fatal(err)
	}
	return kb
}

// watchRSS samples a process's RSS every 10 ms until stop is called, which
// returns the peak in KiB.
func watchRSS(pid int) (stop func() int) {
	var peak atomic.Int64
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		for {
			if kb, err := procRSSKB(pid); err == nil && int64(kb) > peak.Load() {
				peak.Store(int64(kb))
			}
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return func() int { close(done); <-finished; return int(peak.Load()) }
}
