// Package testenv starts the real backing services wspubsub's integration
// tests talk to — redis-server and a MongoDB-wire server (FerretDB, from
// tools/mongowire) — each on a free loopback port, stopped when the test
// ends, and restartable on the same port so tests can simulate outages.
//
// When a service's program is missing the test is skipped, unless
// WSPUBSUB_REQUIRE_SERVICES=1 (set by scripts/test.sh), which makes it fail.
// It is test support only; nothing in the gateway imports it.
package testenv

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Service is one started server process.
type Service struct {
	t    testing.TB
	name string
	Port int
	argv func() []string
	// port picks the port of a first start again when the server could
	// not bind the one it was given (taken meanwhile, e.g. by a client's
	// ephemeral port); nil: the port is fixed.
	port    func(testing.TB) int
	started bool // once started, the port is the service's: a restart reuses it
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	mu      sync.Mutex
}

// Addr returns host:port.
func (s *Service) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.Port) }

// Stop kills the server (SIGKILL: an outage, not a clean shutdown).
func (s *Service) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Start (re)starts the server on its port and waits until it accepts
// connections. A server that exits before accepting (its port was taken
// between the choice and its bind) is started again: on a new port the
// first time, on its own port (once freed) after that.
func (s *Service) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	deadline := time.Now().Add(60 * time.Second)
	for attempt := 1; ; attempt++ {
		err := s.launch(deadline)
		if err == nil {
			s.started = true
			return
		}
		if !errors.Is(err, errExited) || time.Now().After(deadline) {
			s.t.Fatalf("%s not accepting on %s (attempt %d): %v", s.name, s.Addr(), attempt, err)
		}
		if !s.started && s.port != nil {
			s.Port = s.port(s.t)
		} else {
			time.Sleep(100 * time.Millisecond)
		}
	}
}

var errExited = errors.New("exited before accepting connections")

// launch starts the process once and waits until it accepts connections,
// exits, or the deadline passes.
func (s *Service) launch(deadline time.Time) error {
	argv := s.argv()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = &prefixWriter{t: s.t, prefix: s.name}
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting %s: %v", s.name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	for {
		c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err == nil {
			c.Close()
			s.cmd, s.exited = cmd, exited
			return nil
		}
		select {
		case <-exited:
			return errExited
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-exited
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// prefixWriter forwards a service's output to the test log (only shown for
// failing or verbose tests).
type prefixWriter struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	sc := bufio.NewScanner(strings.NewReader(string(p)))
	for sc.Scan() {
		func() {
			defer func() { _ = recover() }() // the test may have finished
			w.t.Logf("[%s] %s", w.prefix, sc.Text())
		}()
	}
	return len(p), nil
}

// FreePort returns a loopback TCP port that was free a moment ago, below
// the kernel's ephemeral range: a server restarted on it cannot find it
// taken by some client's outgoing connection meanwhile.
func FreePort(t testing.TB) int {
	t.Helper()
	lo := ephemeralFloor()
	return freeIn(t, lo-12768, lo, 0)
}

// freeClusterPort is FreePort for a Redis Cluster node, which also listens
// on its port + 10000 (the cluster bus): both below the ephemeral range,
// both free a moment ago.
func freeClusterPort(t testing.TB) int {
	t.Helper()
	lo := ephemeralFloor()
	return freeIn(t, lo-12768, lo-10000, 10000)
}

// freeIn picks a random port in [from, to) that is free, and whose port +
// bus is too (bus > 0).
func freeIn(t testing.TB, from, to, bus int) int {
	t.Helper()
	free := func(p int) bool {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return false
		}
		l.Close()
		return true
	}
	for range 10000 {
		p := from + rand.IntN(to-from)
		if free(p) && (bus == 0 || free(p+bus)) {
			return p
		}
	}
	t.Fatalf("no free port in [%d, %d)", from, to)
	return 0
}

// ephemeralFloor is the first port of the kernel's ephemeral range
// (32768 if it cannot be read, Linux's default).
func ephemeralFloor() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if lo, err := strconv.Atoi(f[0]); err == nil && lo >= 12768+10000+1024 {
				return lo
			}
		}
	}
	return 32768
}

func missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("WSPUBSUB_REQUIRE_SERVICES") == "1" {
		t.Fatalf("%s is required (WSPUBSUB_REQUIRE_SERVICES=1)", what)
	}
	t.Skipf("%s not available; run scripts/test.sh to install and start everything", what)
}

// Redis starts a fresh redis-server without persistence: a restart loses
// everything.
func Redis(t testing.TB) *Service {
	t.Helper()
	return RedisWith(t, "--appendonly", "no")
}

// DurableRedis starts a redis-server that writes every command to its
// append-only file before answering (appendfsync always): a SIGKILL and
// restart lose nothing acknowledged.
func DurableRedis(t testing.TB) *Service {
	t.Helper()
	return RedisWith(t, "--appendonly", "yes", "--appendfsync", "always")
}

// RedisWith starts a fresh redis-server with extra arguments.
func RedisWith(t testing.TB, extra ...string) *Service {
	t.Helper()
	return redisOn(t, FreePort, extra...)
}

// redisOn is RedisWith on a port that pick chooses.
func redisOn(t testing.TB, pick func(testing.TB) int, extra ...string) *Service {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		missing(t, "redis-server")
	}
	dir := t.TempDir()
	s := &Service{t: t, name: "redis", Port: pick(t), port: pick}
	s.argv = func() []string {
		return append([]string{bin, "--port", fmt.Sprint(s.Port), "--bind", "127.0.0.1", "--save", "",
			"--dir", dir, "--loglevel", "warning"}, extra...)
	}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// URL returns the redis:// URL of a Redis service.
func (s *Service) URL() string {
	if s.name == "redis" {
		return "redis://" + s.Addr()
	}
	return "mongodb://" + s.Addr() + "/"
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// mongowireBinary returns the FerretDB helper: $WSPUBSUB_MONGOWIRE if set,
// otherwise it is built once per test process from tools/mongowire.
func mongowireBinary(t testing.TB) string {
	if p := os.Getenv("WSPUBSUB_MONGOWIRE"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		src := filepath.Join(filepath.Dir(file), "..", "..", "tools", "mongowire")
		buildPath = filepath.Join(os.TempDir(), "wspubsub-mongowire")
		cmd := exec.Command("go", "build", "-o", buildPath, ".")
		cmd.Dir = src
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building tools/mongowire: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		missing(t, buildErr.Error())
	}
	return buildPath
}

// Mongo starts a fresh MongoDB-wire server (FerretDB on SQLite). Its data
// survives Stop/Start.
func Mongo(t testing.TB) *Service {
	t.Helper()
	bin := mongowireBinary(t)
	dir := t.TempDir()
	s := &Service{t: t, name: "mongowire", Port: FreePort(t), port: FreePort}
	s.argv = func() []string { return []string{bin, "-listen", s.Addr(), "-dir", dir} }
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Logger returns a debug-level logger writing to the test log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(&prefixWriter{t: t, prefix: "gw"}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
