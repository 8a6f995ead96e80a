package bench

// The machine's ceiling (--scenario ceiling, or --calibrate before any
// scenario): how many 60-byte WebSocket frames per second one sender
// goroutine delivers over loopback TCP to the load tool's own reader, at one
// write system call per frame and at 16 frames per write. A gateway that
// writes one frame per syscall cannot pass the first figure on this box,
// whatever else it does; figures are reported as a ratio to it
// (ratio_to_ceiling), which transfers between machines where absolute
// rates do not.
//
// The sender is in this process; it writes pre-built, unmasked text frames
// (server→client framing) round-robin over the connections with blocking
// writes. The readers are the load tool's WebSocket reader (readWS: 16 KB
// reads, frame headers, sequence number and time stamp, one count per
// frame), in this process for up to CeilingInProc connections (both ends
// here: two descriptors per connection), else in client processes of
// --per-proc connections each, from 127.0.0.1, 127.0.0.2, … (see
// ceiling_readers.go). A phase's rate is the frames received divided by
// the time from its first write to its last frame received.

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"
)

// Ceiling is the calibration's result (the JSON line's "ceiling").
type Ceiling struct {
	OnePerWrite     float64        `json:"one_per_write_per_s"`     // frames delivered per second, one frame per write
	SixteenPerWrite float64        `json:"sixteen_per_write_per_s"` // frames delivered per second, 16 frames per write
	Conns           int            `json:"conns"`                   // connections written to
	Seconds         float64        `json:"seconds"`                 // the two phases' measured time
	WallSeconds     float64        `json:"wall_s"`                  // the whole calibration: connecting, warm-up, phases, teardown
	Procs           int            `json:"client_procs"`            // reader processes (1: in this process)
	InProcess       bool           `json:"readers_in_process"`      // readers in the sender's process
	Phases          []CeilingPhase `json:"phases"`
}

// CeilingPhase is one phase: Writes writes of FramesPerWrite frames each.
type CeilingPhase struct {
	FramesPerWrite int     `json:"frames_per_write"`
	Writes         int64   `json:"writes"`
	Frames         int64   `json:"frames"`    // sent
	Delivered      int64   `json:"delivered"` // counted by the readers
	Seconds        float64 `json:"seconds"`   // first write → last frame received
	PerSec         float64 `json:"per_s"`     // Delivered / Seconds
}

// ceilingFrame is the size of every calibration frame: a 2-byte header and
// a 58-byte JSON payload the bench's reader parses like a message.
const ceilingFrame = 60

// ceilingRingFrames frames are pre-built; frame i carries sequence number
// i, so a connection sees increasing numbers until the ring wraps.
const ceilingRingFrames = 4096

// ceilingRing builds n contiguous frames.
func ceilingRing(n int) []byte {
	t := time.Now().UnixNano()
	out := make([]byte, 0, n*ceilingFrame)
	for i := range n {
		p := fmt.Appendf(nil, `{"data":{"s":%d,"t":%d},"p":"`, i, t)
		p = append(p, strings.Repeat("x", ceilingFrame-2-len(p)-2)...)
		p = append(p, '"', '}')
		out = append(out, 0x81, byte(len(p))) // FIN, text; unmasked, length < 126
		out = append(out, p...)
	}
	return out
}

// ceilingRun is one calibration's state.
type ceilingRun struct {
	conns    []net.Conn // the sender's ends
	readers  []worker
	ring     []byte
	off      int           // next frame's offset in ring
	sent     int64         // frames sent so far, warm-up included
	d        time.Duration // each phase's sending time
	received func() int64
}

// measureCeiling runs the calibration with cfg.CeilingConns connections.
func measureCeiling(ctx context.Context, cfg Config) (*Ceiling, error) {
	start := time.Now()
	r, err := openCeiling(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer r.close()
	r.ring, r.d = ceilingRing(ceilingRingFrames), cfg.CeilingPhase
	c := &Ceiling{Conns: len(r.conns), Procs: len(r.readers), InProcess: r.inProcess()}
	// Warm-up: one frame to every connection, so every reader runs.
	if _, err := r.phase(ctx, 1, 0); err != nil {
		return nil, err
	}
	for _, k := range []int{1, 16} {
		p, err := r.phase(ctx, k, r.d)
		if err != nil {
			return nil, err
		}
		c.Phases = append(c.Phases, p)
		c.Seconds += p.Seconds
	}
	c.OnePerWrite, c.SixteenPerWrite = c.Phases[0].PerSec, c.Phases[1].PerSec
	r.close()
	c.WallSeconds = time.Since(start).Seconds()
	return c, nil
}

// phase writes k frames per write, round-robin over the connections, for
// d (a zero d: one round), then waits for the readers to count them.
func (r *ceilingRun) phase(ctx context.Context, k int, d time.Duration) (CeilingPhase, error) {
	span := k * ceilingFrame
	if r.off%span != 0 || r.off+span > len(r.ring) {
		r.off = 0
	}
	wd := time.Now().Add(d + 10*time.Second) // a reader that stopped cannot hold the sender
	for _, c := range r.conns {
		_ = c.SetWriteDeadline(wd)
	}
	r0 := r.received()
	start := time.Now()
	deadline := start.Add(d)
	var writes int64
rounds:
	for {
		b := r.ring[r.off : r.off+span]
		for _, c := range r.conns {
			if _, err := c.Write(b); err != nil {
				return CeilingPhase{}, fmt.Errorf("ceiling: write: %w", err)
			}
			writes++
			if d > 0 && writes&15 == 0 && (!time.Now().Before(deadline) || ctx.Err() != nil) {
				break rounds
			}
		}
		if r.off += span; r.off+span > len(r.ring) {
			r.off = 0
		}
		if d == 0 || ctx.Err() != nil || !time.Now().Before(deadline) {
			break
		}
	}
	if err := ctx.Err(); err != nil {
		return CeilingPhase{}, err
	}
	p := CeilingPhase{FramesPerWrite: k, Writes: writes, Frames: writes * int64(k)}
	r.sent += p.Frames
	end, got := r.drain(r.sent)
	p.Delivered = got - r0
	if p.Seconds = end.Sub(start).Seconds(); p.Seconds > 0 {
		p.PerSec = float64(p.Delivered) / p.Seconds
	}
	return p, nil
}

// drain waits until the readers counted want frames in all, or none came
// for 10 s (bounded at a minute), and returns when the last one was seen.
// Loopback TCP loses nothing: the windows only end a hang, and are long so
// that a stall of a loaded machine is not counted as frames missing (the
// figure is timed to the last frame seen, so they cost nothing).
func (r *ceilingRun) drain(want int64) (time.Time, int64) {
	last, lastChange := r.received(), time.Now()
	limit := time.Now().Add(time.Minute)
	for last < want && time.Since(lastChange) < 10*time.Second && time.Now().Before(limit) {
		time.Sleep(500 * time.Microsecond)
		if n := r.received(); n != last {
			last, lastChange = n, time.Now()
		}
	}
	return lastChange, last
}

// summary is the human line for a ceiling.
func (c *Ceiling) summary() string {
	where := "in this process"
	if !c.InProcess {
		where = fmt.Sprintf("in %d client process(es)", c.Procs)
	}
	gain := 0.0
	if c.OnePerWrite > 0 {
		gain = c.SixteenPerWrite / c.OnePerWrite
	}
	return fmt.Sprintf("ceiling: %d loopback connections (readers %s), one sender goroutine, 60-byte frames: %.0f/s at one frame per write, %.0f/s at 16 per write (%.1f×); measured %.1fs, calibration %.1fs",
		c.Conns, where, c.OnePerWrite, c.SixteenPerWrite, gain, c.Seconds, c.WallSeconds)
}
