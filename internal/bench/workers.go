package bench

// Client processes: the in-process worker and the child processes that
// spread connections over source addresses, driven over stdin/stdout.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// worker is one client process's handle: in this process, or a child
// `wspubsub bench --worker` speaking line-delimited JSON on stdio.
type worker interface {
	ready() (failures int, err error)
	received() int64
	// disconnect closes every connection; reconnect opens them again
	// (resuming from the last id each received) and returns the failures.
	disconnect() error
	reconnect() (failures int, err error)
	stop() WorkerStats
}

type localWorker struct {
	w    *Worker
	done chan int
}

func (l *localWorker) ready() (int, error) { return <-l.done, nil }

func (l *localWorker) received() int64 { return l.w.Received() }

func (l *localWorker) disconnect() error { l.w.Disconnect(); return nil }

func (l *localWorker) reconnect() (int, error) { return l.w.Reconnect(), nil }

func (l *localWorker) stop() WorkerStats { return l.w.Stop() }

type childWorker struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	recv  atomic.Int64
	final chan WorkerStats
	fail  chan int
	acks  chan int // answers to DISCONNECT (0) and RECONNECT (failures)
}

// command sends one line to the child and waits for its answer.
func (c *childWorker) command(line string) (int, error) {
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		return 0, fmt.Errorf("bench worker: %w", err)
	}
	select {
	case n, ok := <-c.acks:
		if !ok {
			return 0, fmt.Errorf("bench worker exited during %s", line)
		}
		return n, nil
	case <-time.After(10 * time.Minute):
		return 0, fmt.Errorf("bench worker: no answer to %s after 10 minutes", line)
	}
}

func (c *childWorker) disconnect() error {
	_, err := c.command("DISCONNECT")
	return err
}

func (c *childWorker) reconnect() (int, error) { return c.command("RECONNECT") }

func (c *childWorker) ready() (int, error) {
	select {
	case f, ok := <-c.fail:
		if !ok {
			return 0, fmt.Errorf("bench worker exited before connecting")
		}
		return f, nil
	case <-time.After(10 * time.Minute):
		return 0, fmt.Errorf("bench worker not ready after 10 minutes")
	}
}

func (c *childWorker) received() int64 { return c.recv.Load() }

func (c *childWorker) stop() WorkerStats {
	_ = c.stdin.Close() // EOF on stdin: stop and report
	select {
	case st := <-c.final:
		_ = c.cmd.Wait()
		return st
	case <-time.After(time.Minute):
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
		return WorkerStats{}
	}
}

// startWorkers splits the connections over client processes.
func startWorkers(cfg Config) ([]worker, error) {
	procs := (cfg.Conns + cfg.PerProc - 1) / cfg.PerProc
	sources := sourcesFor(cfg, procs)
	var out []worker
	for i := range procs {
		first := i * cfg.PerProc
		wc := WorkerConfig{URLs: cfg.wsURLs(), KeyPrefix: cfg.KeyPrefix, First: first, Count: min(cfg.PerProc, cfg.Conns-first),
			Source: sources[i], Transport: cfg.Transport, Batch: cfg.Batch, Messages: cfg.Messages,
			Broadcast: cfg.Scenario == "broadcast", SlowFrom: cfg.Conns - int(float64(cfg.Conns)*cfg.SlowShare),
			Resume: cfg.Resume}
		if cfg.Scenario == "churn" {
			wc.ChurnShare, wc.ChurnFor = churnShare, cfg.Duration
		}
		if procs == 1 {
			w := NewWorker(wc)
			l := &localWorker{w: w, done: make(chan int, 1)}
			go func() { l.done <- w.Connect() }()
			out = append(out, l)
			continue
		}
		c, err := startChild(cfg, wc)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func startChild(cfg Config, wc WorkerConfig) (*childWorker, error) {
	js, _ := json.Marshal(wc)
	var cmd *exec.Cmd
	if cfg.WorkerCommand != nil {
		cmd = cfg.WorkerCommand(string(js))
	} else {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		cmd = exec.Command(exe, "bench", "--worker", string(js))
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting bench worker: %w", err)
	}
	c := &childWorker{cmd: cmd, stdin: stdin, final: make(chan WorkerStats, 1), fail: make(chan int, 1), acks: make(chan int, 1)}
	go func() {
		defer close(c.fail)
		defer close(c.acks)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			kind, body, _ := strings.Cut(sc.Text(), " ")
			switch kind {
			case "READY":
				n, _ := strconv.Atoi(body)
				c.fail <- n
			case "DISCONNECTED":
				c.acks <- 0
			case "RECONNECTED":
				n, _ := strconv.Atoi(body)
				c.acks <- n
			case "PROGRESS":
				n, _ := strconv.ParseInt(body, 10, 64)
				c.recv.Store(n)
			case "STATS":
				var st WorkerStats
				_ = json.Unmarshal([]byte(body), &st)
				c.final <- st
			}
		}
	}()
	return c, nil
}

// RunWorker is the child side: connect, report progress, obey DISCONNECT
// and RECONNECT lines until stdin closes, then report the counts.
func RunWorker(cfgJSON string, stdin *os.File, stdout *os.File) error {
	var wc WorkerConfig
	if err := json.Unmarshal([]byte(cfgJSON), &wc); err != nil {
		return fmt.Errorf("bad worker config: %w", err)
	}
	w := NewWorker(wc)
	failures := w.Connect()
	var mu sync.Mutex // one line at a time on stdout
	say := func(format string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stdout, format, a...)
	}
	say("READY %d\n", failures)
	done := make(chan struct{})
	go func() {
		defer close(done) // EOF when the parent closes stdin
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			switch sc.Text() {
			case "DISCONNECT":
				w.Disconnect()
				say("DISCONNECTED\n")
			case "RECONNECT":
				say("RECONNECTED %d\n", w.Reconnect())
			}
		}
	}()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			say("PROGRESS %d\n", w.Received())
		case <-done:
			st := w.Stop()
			b, _ := json.Marshal(st)
			say("STATS %s\n", b)
			return nil
		}
	}
}

func stopAll(ws []worker) {
	for _, w := range ws {
		w.stop()
	}
}
