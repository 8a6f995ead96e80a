package bench

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// checkCeiling asserts what holds on any machine: positive rates, every
// frame sent counted by the readers, and 16 frames per write in the second
// phase (never a speed).
func checkCeiling(t *testing.T, c *Ceiling, conns int) {
	t.Helper()
	if c == nil {
		t.Fatal("no ceiling")
	}
	if c.Conns != conns || c.OnePerWrite <= 0 || c.SixteenPerWrite <= 0 || c.Seconds <= 0 || len(c.Phases) != 2 {
		t.Fatalf("ceiling %+v", c)
	}
	for i, k := range []int{1, 16} {
		p := c.Phases[i]
		if p.FramesPerWrite != k || p.Writes <= 0 || p.Frames != int64(k)*p.Writes {
			t.Fatalf("phase %d: %+v, want %d frames per write", i, p, k)
		}
		if p.Delivered != p.Frames {
			t.Fatalf("phase %d: %d frames sent, %d counted by the readers", i, p.Frames, p.Delivered)
		}
	}
}

func TestCeilingInProcess(t *testing.T) {
	var out bytes.Buffer
	res, err := Run(context.Background(), Config{Scenario: "ceiling", Conns: 50, CeilingPhase: 200 * time.Millisecond}, &out)
	if err != nil {
		t.Fatal(err)
	}
	checkCeiling(t, res.Ceiling, 50)
	if !res.Ceiling.InProcess || res.Ceiling.Procs != 1 || res.RatioToCeiling != nil {
		t.Fatalf("got %+v", res)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ceiling: 50 loopback connections") || !strings.Contains(lines[1], `"one_per_write_per_s":`) {
		t.Fatalf("report:\n%s", out.String())
	}
}

// Beyond CeilingInProc connections the readers are client processes, of
// PerProc connections each.
func TestCeilingReadersInClientProcesses(t *testing.T) {
	res, err := Run(context.Background(), Config{
		Scenario: "ceiling", Conns: 50, CeilingPhase: 200 * time.Millisecond, CeilingInProc: 20, PerProc: 20,
		WorkerCommand: func(js string) *exec.Cmd {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "WSPUBSUB_BENCH_WORKER="+js)
			return cmd
		},
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	checkCeiling(t, res.Ceiling, 50)
	if res.Ceiling.InProcess || res.Ceiling.Procs != 3 {
		t.Fatalf("readers: %+v", res.Ceiling)
	}
}

func TestCeilingRefusesMoreThanTheFileLimit(t *testing.T) {
	_, err := Run(context.Background(), Config{Scenario: "ceiling", Conns: openFileLimit()}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "open files") {
		t.Fatalf("err = %v", err)
	}
}

func TestCeilingFramesAreParsedAsMessages(t *testing.T) {
	ring := ceilingRing(ceilingRingFrames)
	if len(ring) != ceilingRingFrames*ceilingFrame {
		t.Fatalf("ring of %d bytes", len(ring))
	}
	for _, i := range []int{0, 7, ceilingRingFrames - 1} {
		f := ring[i*ceilingFrame : (i+1)*ceilingFrame]
		if f[0] != 0x81 || int(f[1]) != ceilingFrame-2 {
			t.Fatalf("frame %d header % x", i, f[:2])
		}
		if seq, _, ok := parseSeq(f[2:]); !ok || seq != int64(i) {
			t.Fatalf("frame %d: %q parsed as %d %v", i, f[2:], seq, ok)
		}
	}
}

// --calibrate: the run reports its ceiling, its ratio to it and the
// gateway's frames per write (from its /metrics).
func TestCalibratedRunReportsRatioAndFramesPerWrite(t *testing.T) {
	target, redisURL := gatewayFor(t, 50)
	var out bytes.Buffer
	res, err := Run(context.Background(), Config{
		Target: target, Scenario: "personal", Conns: 50, Messages: 2000, RedisURL: redisURL,
		Drain: patience, Calibrate: true, CeilingConns: 40, CeilingPhase: 200 * time.Millisecond,
	}, &out)
	if err != nil {
		t.Fatal(err)
	}
	checkCeiling(t, res.Ceiling, 40)
	if res.Lost != 0 || res.RatioToCeiling == nil || *res.RatioToCeiling <= 0 {
		t.Fatalf("got %+v", res)
	}
	if res.SocketWrites <= 0 || res.FramesWritten < res.Delivered || res.FramesPerWrite < 1 {
		t.Fatalf("gateway writes %d, frames %d (%.2f per write) for %d delivered", res.SocketWrites, res.FramesWritten, res.FramesPerWrite, res.Delivered)
	}
	for _, want := range []string{"ratio to ceiling: ", "frames per write", `"ratio_to_ceiling":`, `"frames_per_write":`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}
