package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

// TestMain lets the test binary act as a client process for the
// multi-process test.
func TestMain(m *testing.M) {
	if js := os.Getenv("WSPUBSUB_BENCH_WORKER"); js != "" {
		if err := RunWorker(js, os.Stdin, os.Stdout); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// gatewayFor starts an in-process gateway on Redis that knows keys
// bench-0 … bench-(n-1).
func gatewayFor(t *testing.T, n int) (target, redisURL string) {
	t.Helper()
	r := testenv.Redis(t)
	return gatewaysOn(t, 1, n, "--redis-url", r.URL())[0], r.URL()
}

func gwReady(target string) bool {
	rss, _ := (&gatewayProbe{metrics: target + "/metrics"}).read()
	return rss > 0
}

func itoa(i int) string { return strconv.Itoa(i) }

// patience is how long a test waits for what must happen, and the Drain of
// runs that must lose nothing: a run stops draining as soon as everything
// expected has arrived, so a long window costs nothing when all goes well,
// and a slow or loaded machine's stalls are not counted as losses.
const patience = time.Minute

// runWithLosses runs cfg, whose faults lose messages on purpose, until
// check (which describes what is wrong, or returns "") accepts the result,
// and fails the test with the last description. Such a run always waits
// out its Drain (what it lost never arrives), so it is first given cfg's
// short one; a stall longer than that with messages in flight would count
// them lost too, so a refused result is retried with longer windows, the
// last patience: only a real miscount, a loss or a hang fails that one.
func runWithLosses(t *testing.T, cfg Config, check func(Result) string) {
	t.Helper()
	var why string
	for _, d := range []time.Duration{cfg.Drain, 10 * cfg.Drain, patience} {
		cfg.Drain = d
		res, err := Run(context.Background(), cfg, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if why = check(res); why == "" {
			return
		}
		t.Logf("with a %v drain: %s; again with a longer one", d, why)
	}
	t.Fatal(why)
}

func TestCountsLostDuplicatedAndOutOfOrder(t *testing.T) {
	target, redisURL := gatewayFor(t, 1)
	runWithLosses(t, Config{
		Target: target, Scenario: "personal", Conns: 1, Messages: 100, RedisURL: redisURL,
		Drain: 500 * time.Millisecond,
		Fault: Fault{Skip: []int64{5, 6}, Duplicate: []int64{10}, Swap: []int64{20}},
	}, func(res Result) string {
		if res.Expected != 100 || res.Lost != 2 || res.Duplicates != 1 || res.OutOfOrder != 1 || res.Delivered != 99 {
			return fmt.Sprintf("got %+v", res)
		}
		if res.Latency.Samples != 99 || res.Latency.P50 <= 0 {
			return fmt.Sprintf("latency %+v", res.Latency)
		}
		return ""
	})
}

func TestBroadcastCountsPerConnection(t *testing.T) {
	target, redisURL := gatewayFor(t, 3)
	runWithLosses(t, Config{
		Target: target, Scenario: "broadcast", Conns: 3, Messages: 20, RedisURL: redisURL,
		Drain: 500 * time.Millisecond, Fault: Fault{Skip: []int64{7}, Duplicate: []int64{3}},
	}, func(res Result) string {
		if res.Expected != 60 || res.Lost != 3 || res.Duplicates != 3 || res.OutOfOrder != 0 {
			return fmt.Sprintf("got %+v", res)
		}
		return ""
	})
}

func TestCleanRunsLoseNothing(t *testing.T) {
	target, redisURL := gatewayFor(t, 50)
	for _, sc := range []Config{
		{Scenario: "personal", Messages: 2000},
		{Scenario: "broadcast", Messages: 50},
		{Scenario: "rate", Rate: 500, Duration: time.Second},
		{Scenario: "personal", Messages: 200, Transport: "eventsource"},
		{Scenario: "personal", Messages: 100, Transport: "polling"},
	} {
		sc.Target, sc.Conns, sc.RedisURL, sc.Drain = target, 50, redisURL, patience
		res, err := Run(context.Background(), sc, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if res.Connected != 50 || res.Lost != 0 || res.Duplicates != 0 || res.OutOfOrder != 0 || res.Delivered != res.Expected {
			t.Fatalf("%s/%s: %+v", sc.Scenario, sc.Transport, res)
		}
	}
}

func TestChurnAndIdle(t *testing.T) {
	target, redisURL := gatewayFor(t, 40)
	res, err := Run(context.Background(), Config{Target: target, Scenario: "churn", Conns: 40, Rate: 200,
		Duration: 1500 * time.Millisecond, RedisURL: redisURL, Drain: patience}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.ChurnConnects == 0 || res.ChurnFailures != 0 || res.Lost != 0 {
		t.Fatalf("churn: %+v", res)
	}
	res, err = Run(context.Background(), Config{Target: target, Scenario: "idle", Conns: 40, Duration: time.Second,
		GatewayPID: os.Getpid()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Connected != 40 || res.ConnectRate <= 0 || res.GatewayRSSAfter <= 0 {
		t.Fatalf("idle: %+v", res)
	}
}

func TestSeveralClientProcesses(t *testing.T) {
	target, redisURL := gatewayFor(t, 30)
	res, err := Run(context.Background(), Config{
		Target: target, Scenario: "personal", Conns: 30, PerProc: 10, Messages: 500, RedisURL: redisURL, Drain: patience,
		WorkerCommand: func(js string) *exec.Cmd {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "WSPUBSUB_BENCH_WORKER="+js)
			return cmd
		},
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Procs != 3 || res.Connected != 30 || res.Lost != 0 || res.Delivered != 500 {
		t.Fatalf("got %+v", res)
	}
}

// The durable path: FCALL wspubsub_publish over Redis, POST /publish over
// HTTP; resuming clients get {"id":…,"data":…} frames and lose nothing.
func TestDurablePersonalLosesNothing(t *testing.T) {
	target, redisURL := gatewayFor(t, 50)
	for _, sc := range []Config{
		{Messages: 2000, RedisURL: redisURL},
		{Messages: 2000, RedisURL: redisURL, NoIdempotencyKeys: true},
		{Messages: 200}, // POST /publish
		{Messages: 200, RedisURL: redisURL, Transport: "eventsource"},
		{Messages: 100, RedisURL: redisURL, Transport: "polling"},
	} {
		sc.Target, sc.Scenario, sc.Conns, sc.Durable, sc.Resume, sc.Drain = target, "personal", 50, true, true, patience
		res, err := Run(context.Background(), sc, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if res.Connected != 50 || res.Lost != 0 || res.Duplicates != 0 || res.OutOfOrder != 0 || res.Delivered != res.Expected ||
			res.Positions != 50 || res.Gaps != 0 {
			t.Fatalf("%s/%q: %+v", sc.Transport, sc.RedisURL, res)
		}
		if sc.RedisURL == "" {
			if res.Redis != nil {
				t.Fatalf("Redis memory read without --redis-url: %+v", res.Redis)
			}
			continue
		}
		if m := res.Redis; m == nil || m.Entries <= 0 || m.Entries > 50*100 || m.Entries < m.EntriesBefore || m.StreamBytes <= 0 || m.StreamBytesPerHeld <= 0 || m.UsedAfter <= 0 || m.IdempotencyKeys == sc.NoIdempotencyKeys {
			t.Fatalf("redis memory: %+v", res.Redis)
		}
	}
}

func TestDurableNeedsTheHistoryFunctions(t *testing.T) {
	r := testenv.Redis(t) // no gateway has loaded wspubsub_publish here
	target, _ := gatewayFor(t, 1)
	_, err := Run(context.Background(), Config{Target: target, Scenario: "personal", Conns: 1, Messages: 10,
		RedisURL: r.URL(), Durable: true}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "history-size") {
		t.Fatalf("got %v", err)
	}
}

// The resume scenario: clients away while messages are published for them
// come back to every one of them, once, in order.
func TestResumeCatchesUp(t *testing.T) {
	target, redisURL := gatewayFor(t, 20)
	for _, sc := range []Config{
		{Conns: 20, Behind: 30},
		{Conns: 20, Behind: 30, PerProc: 10, WorkerCommand: func(js string) *exec.Cmd {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "WSPUBSUB_BENCH_WORKER="+js)
			return cmd
		}},
		{Conns: 10, Behind: 10, Transport: "eventsource"},
		{Conns: 5, Behind: 10, Transport: "polling"},
		{Conns: 10, Behind: 10, RedisURL: "-"}, // POST /publish
	} {
		sc.Target, sc.Scenario, sc.Drain = target, "resume", patience
		if sc.RedisURL == "-" {
			sc.RedisURL = ""
		} else {
			sc.RedisURL = redisURL
		}
		res, err := Run(context.Background(), sc, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		rr := res.Resume
		want := int64(sc.Conns * (1 + sc.Behind))
		if res.Connected != sc.Conns || res.Expected != want || res.Delivered != want || res.Lost != 0 || res.Duplicates != 0 ||
			res.OutOfOrder != 0 || res.ServerClosed != 0 || rr == nil || rr.Reconnected != sc.Conns || rr.ReconnectFailures != 0 ||
			rr.CatchupDelivered != int64(sc.Conns*sc.Behind) || rr.CatchupExpected != rr.CatchupDelivered || rr.Gaps != 0 ||
			rr.CatchupSeconds <= 0 || rr.CatchupPerSec <= 0 {
			t.Fatalf("%s procs %d: %+v %+v", sc.Transport, res.Procs, res, rr)
		}
	}
}

// More published while away than the history holds (--history-size 100):
// each client is told {"gap":true} and gets the 100 held.
func TestResumeBeyondTheHistoryShowsTheGap(t *testing.T) {
	target, redisURL := gatewayFor(t, 5)
	runWithLosses(t, Config{Target: target, Scenario: "resume", Conns: 5, Behind: 103,
		RedisURL: redisURL, Drain: time.Second}, func(res Result) string {
		if res.Gaps != 5 || res.Resume.CatchupDelivered != 5*100 || res.Lost != 5*3 || res.Duplicates != 0 || res.OutOfOrder != 0 {
			return fmt.Sprintf("%+v %+v", res, res.Resume)
		}
		return ""
	})
}

func TestParseID(t *testing.T) {
	for _, c := range []struct {
		frame          string
		id             string
		position, ok   bool
		seq            int64
		seqOK, counted bool
	}{
		{`{"id":"mq1x.1700000000000-0","data":{"s":7,"t":1}}`, "mq1x.1700000000000-0", false, true, 7, true, true},
		{`{"id":"mq1x.1700000000000-3"}`, "mq1x.1700000000000-3", true, true, 0, false, false},
		{`{"id":"0"}`, "0", true, true, 0, false, false},
		{`{"gap":true}`, "", false, false, 0, false, false},
		{`{"data":{"s":3,"t":2}}`, "", false, false, 3, true, true},
	} {
		id, pos, ok := parseID([]byte(c.frame))
		if string(id) != c.id || pos != c.position || ok != c.ok {
			t.Errorf("%s: %q %v %v", c.frame, id, pos, ok)
		}
		seq, _, ok := parseSeq([]byte(c.frame))
		if ok != c.seqOK || seq != c.seq {
			t.Errorf("%s: seq %d %v", c.frame, seq, ok)
		}
		w := NewWorker(WorkerConfig{Messages: 10, Resume: true})
		conn := &wconn{}
		conn.last.Store(-1)
		w.onMessage(conn, []byte(c.frame), time.Now(), time.Time{})
		if (w.Received() == 1) != c.counted || (c.ok && string(conn.lastID) != c.id) || w.unexpected.Load() != 0 {
			t.Errorf("%s: received %d, last id %q, unexpected %d", c.frame, w.Received(), conn.lastID, w.unexpected.Load())
		}
	}
}

func TestHistogramPercentiles(t *testing.T) {
	var h histogram
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	l := summarize(h.snapshot())
	if l.Samples != 1000 || l.P50 < 0.48 || l.P50 > 0.54 || l.P99 < 0.96 || l.P99 > 1.06 {
		t.Fatalf("%+v", l)
	}
}

func TestParseSeq(t *testing.T) {
	seq, sent, ok := parseSeq([]byte(`{"data":{"s":42,"t":1700000000000000000}}`))
	if !ok || seq != 42 || sent != 1700000000000000000 {
		t.Fatal(seq, sent, ok)
	}
	if _, _, ok := parseSeq([]byte("heartbeat message")); ok {
		t.Fatal("heartbeat parsed")
	}
}

func BenchmarkReaderPerFrame(b *testing.B) {
	w := NewWorker(WorkerConfig{Messages: 1 << 20})
	c := &wconn{}
	p := []byte(`{"data":{"s":42,"t":1700000000000000000}}`)
	now := time.Now()
	b.ReportAllocs()
	i := int64(0)
	for b.Loop() {
		w.onMessage(c, p, now, time.Time{})
		i++
	}
}

func TestProvisionKeysInMongoAndFile(t *testing.T) {
	m := testenv.Mongo(t)
	ctx := context.Background()
	cfg := Config{Keys: "mongo", Conns: 2500, KeyPrefix: "p-", MongoURI: m.URL(), MongoDB: "myDB", MongoCollection: "myCollection"}
	for range 2 { // twice: existing keys are not an error
		if err := provision(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	store, err := keystore.NewMongo(keystore.MongoConfig{URI: m.URL(), Database: "myDB", Collection: "myCollection"})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close(ctx)
	for _, k := range []string{"p-0", "p-2499"} {
		if ok, err := store.Contains(ctx, k); !ok || err != nil {
			t.Fatalf("%s: %v %v", k, ok, err)
		}
	}
	path := t.TempDir() + "/keys"
	if err := provision(ctx, Config{Keys: "file", Conns: 3, KeyPrefix: "f-", KeysFile: path}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "f-0\nf-1\nf-2\n" {
		t.Fatalf("keys file %q", b)
	}
}
