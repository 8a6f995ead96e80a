package hub

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// hookedHistory is the in-process history with a hook on Since, so a test
// can publish at the exact moments that matter: between registration and
// the history read, and between the read and the replay.
type hookedHistory struct {
	broker.History
	mu    sync.Mutex
	since func(ctx context.Context, key, since string) (broker.Replay, error)
}

func (hh *hookedHistory) Since(ctx context.Context, key, since string) (broker.Replay, error) {
	hh.mu.Lock()
	f := hh.since
	hh.mu.Unlock()
	if f != nil {
		return f(ctx, key, since)
	}
	return hh.History.Since(ctx, key, since)
}

func (hh *hookedHistory) hook(f func(ctx context.Context, key, since string) (broker.Replay, error)) {
	hh.mu.Lock()
	hh.since = f
	hh.mu.Unlock()
}

// resumeFixture is a hub whose History is broker.Memory's. What the broker
// publishes on its inbound channel waits in `in` until the test dispatches
// it (the live path) or drops it (a lost subscription): the test decides
// the interleaving, nothing depends on timing.
type resumeFixture struct {
	t  *testing.T
	b  *broker.Memory
	hh *hookedHistory
	h  *Hub
	in chan published
}

// published is one message the broker handed on, and whether it came
// from the recorded channel (as the gateway wires RunSplit).
type published struct {
	p        []byte
	recorded bool
}

func newResumeFixture(t *testing.T, size int) *resumeFixture {
	b := broker.NewMemory("in").WithHistory(broker.HistoryConfig{Size: size, TTL: time.Minute})
	f := &resumeFixture{t: t, b: b, hh: &hookedHistory{History: b}, in: make(chan published, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		_ = b.RunSplit(ctx,
			func(p []byte) { f.in <- published{append([]byte(nil), p...), false} },
			func(p []byte) { f.in <- published{append([]byte(nil), p...), true} })
	}()
	for deadline := time.Now().Add(time.Minute); !b.Ready(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("in-process broker not running")
		}
	}
	f.h = newHub(t, keystore.NewMemory("k", "other"), nil, func(c *Config) { c.History = f.hh })
	return f
}

// record records {"data":n} for recipients (default "k") and returns the ids.
func (f *resumeFixture) record(n int, recipients ...string) []string {
	f.t.Helper()
	if len(recipients) == 0 {
		recipients = []string{"k"}
	}
	list := ""
	for i, r := range recipients {
		if i > 0 {
			list += ","
		}
		list += fmt.Sprintf("%q", r)
	}
	r, err := f.b.Record(context.Background(), fmt.Appendf(nil, `{"recipients":[%s],"data":%d}`, list, n), "")
	if err != nil || len(r.IDs) != len(recipients) {
		f.t.Fatalf("Record %d: %+v %v", n, r, err)
	}
	return r.IDs
}

func (f *resumeFixture) id(n int) string { return f.record(n)[0] }

// position is the frame a client starting from now gets while nothing has
// been recorded for key yet: a real position, not "0" (broker.History).
func (f *resumeFixture) position(key string) string {
	f.t.Helper()
	rp, err := f.b.Since(context.Background(), key, "")
	if err != nil {
		f.t.Fatal(err)
	}
	return `{"id":"` + rp.Top + `"}`
}

func (f *resumeFixture) published() published {
	f.t.Helper()
	select {
	case p := <-f.in:
		return p
	case <-time.After(time.Minute): // only a loss takes that long
		f.t.Fatal("nothing published on the inbound channels")
		return published{}
	}
}

// dispatchNext delivers the oldest published message live, through the
// handler the gateway gives its channel.
func (f *resumeFixture) dispatchNext() {
	f.t.Helper()
	if p := f.published(); p.recorded {
		f.h.DispatchRecorded(p.p)
	} else {
		f.h.Dispatch(p.p)
	}
}

// dropNext loses it, as a gateway whose subscription is down does.
func (f *resumeFixture) dropNext() { f.t.Helper(); f.published() }

func (f *resumeFixture) admitResuming(since string) *session.Session {
	f.t.Helper()
	s := session.New(f.h.NewID(), session.Peer{Key: "k", Resume: true, Since: since}, "test", &fakeTransport{}, 1<<20)
	if err := f.h.Admit(context.Background(), s); err != nil {
		f.t.Fatalf("admit since=%q: %v", since, err)
	}
	return s
}

func frame(id string, n int) string { return fmt.Sprintf(`{"id":%q,"data":%d}`, id, n) }

func expectFrames(t *testing.T, s *session.Session, want ...string) {
	t.Helper()
	got := payloads(s)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("session %d\n got %v\nwant %v", s.ID, got, want)
	}
}

// A message published while a resuming client is being admitted — after
// it is registered, before or after its history is read — reaches it
// exactly once, after the history.
func TestResumeMessageDuringHistoryReadOnceAfterHistory(t *testing.T) {
	f := newResumeFixture(t, 100)
	id1 := f.id(1)
	f.dispatchNext() // nobody connected yet
	var id2, id3 string
	f.hh.hook(func(ctx context.Context, key, since string) (broker.Replay, error) {
		id2 = f.id(2)
		f.dispatchNext() // registered, not yet read: held, and in the history
		rp, err := f.b.Since(ctx, key, since)
		id3 = f.id(3)
		f.dispatchNext() // read already: held only
		return rp, err
	})
	a := f.admitResuming(id1)
	expectFrames(t, a, frame(id2, 2), frame(id3, 3))

	// Recorded before the read but dispatched after the replay: the live
	// copy is dropped for the client that got it from the history.
	var id4 string
	f.hh.hook(func(ctx context.Context, key, since string) (broker.Replay, error) {
		id4 = f.id(4)
		return f.b.Since(ctx, key, since)
	})
	b := f.admitResuming(id3)
	f.hh.hook(nil)
	f.dispatchNext()
	expectFrames(t, b, frame(id4, 4))
	expectFrames(t, a, frame(id4, 4))

	id5 := f.id(5)
	f.dispatchNext()
	expectFrames(t, a, frame(id5, 5))
	expectFrames(t, b, frame(id5, 5))
	if got := testutil.ToFloat64(f.h.m.Resumes.WithLabelValues(metrics.ResumeComplete)); got != 2 {
		t.Fatalf("resumes{complete} = %v", got)
	}
}

// One recorded message: a resuming client gets the recorded form (its own
// key's id first), an old client the original frame. A plain PUBLISH
// (no ids) reaches both unchanged.
func TestResumeRecordedAndOriginalFormsOfOneMessage(t *testing.T) {
	f := newResumeFixture(t, 100)
	legacy, _ := admit(t, f.h, "k", 1<<20)
	res := f.admitResuming("")
	other := session.New(f.h.NewID(), session.Peer{Key: "other", Resume: true, Since: "0"}, "test", &fakeTransport{}, 1<<20)
	if err := f.h.Admit(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	expectFrames(t, res, f.position("k"))
	ids := f.record(1, "k", "other")
	f.dispatchNext()
	expectFrames(t, legacy, `{"data":1}`)
	expectFrames(t, res, frame(ids[0], 1))
	expectFrames(t, other, frame(ids[1], 1))
	f.h.Dispatch([]byte(`{"recipients":["k"],"data":"plain"}`))
	expectFrames(t, legacy, `{"data":"plain"}`)
	expectFrames(t, res, `{"data":"plain"}`)
}

func waitDone(t *testing.T, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Resync did not finish")
	}
}

// After the broker's subscription is lost and back, Resync gives a live
// resuming client what was recorded meanwhile, once, in order; live
// delivery then goes on without duplicates. Old clients are not touched.
func TestResumeResyncCatchesUpALiveSession(t *testing.T) {
	f := newResumeFixture(t, 100)
	legacy, _ := admit(t, f.h, "k", 1<<20)
	s := f.admitResuming("")
	expectFrames(t, s, f.position("k"))
	id1 := f.id(1)
	f.dispatchNext()
	expectFrames(t, s, frame(id1, 1))
	payloads(legacy)

	// The subscription is down: 2 and 3 are recorded, never delivered live.
	id2, id3 := f.id(2), f.id(3)
	f.dropNext()
	f.dropNext()
	// Back: 4 arrives live while Resync reads the history (held, and in
	// the history); 5 after the read (held only).
	var id4, id5 string
	f.hh.hook(func(ctx context.Context, key, since string) (broker.Replay, error) {
		id4 = f.id(4)
		f.dispatchNext()
		rp, err := f.b.Since(ctx, key, since)
		id5 = f.id(5)
		f.dispatchNext()
		return rp, err
	})
	waitDone(t, f.h.Resync(context.Background()))
	f.hh.hook(nil)
	expectFrames(t, s, frame(id2, 2), frame(id3, 3), frame(id4, 4), frame(id5, 5))
	expectFrames(t, legacy, `{"data":4}`, `{"data":5}`)
	id6 := f.id(6)
	f.dispatchNext()
	expectFrames(t, s, frame(id6, 6))
	if got := testutil.ToFloat64(f.h.m.Resumes.WithLabelValues(metrics.ResumeResync)); got != 1 {
		t.Fatalf("resumes{resync} = %v", got)
	}
}

// The broker dispatches the first message after its subscription is back
// as soon as Resync returns, before the histories are read: it must not
// overtake what the session missed (found by the e2e test: the session
// took it, its last id jumped past the missed ones, and they were lost).
func TestResumeResyncHoldsBeforeReturning(t *testing.T) {
	f := newResumeFixture(t, 100)
	s := f.admitResuming("")
	expectFrames(t, s, f.position("k"))
	id1, id2 := f.id(1), f.id(2)
	f.dropNext()
	f.dropNext()
	read := make(chan struct{})
	f.hh.hook(func(ctx context.Context, key, since string) (broker.Replay, error) {
		<-read // the history is read only after the live message arrived
		return f.b.Since(ctx, key, since)
	})
	done := f.h.Resync(context.Background())
	id3 := f.id(3)
	f.dispatchNext()
	close(read)
	waitDone(t, done)
	expectFrames(t, s, frame(id1, 1), frame(id2, 2), frame(id3, 3))
}

// gate makes the next Since read the history at once but return only when
// released: a catch-up caught between its read and its replay.
func gate(f *resumeFixture) (read, release chan struct{}) {
	read, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	f.hh.hook(func(ctx context.Context, key, since string) (broker.Replay, error) {
		rp, err := f.b.Since(ctx, key, since)
		first := false
		once.Do(func() { first = true })
		if first {
			close(read)
			<-release
		}
		return rp, err
	})
	return read, release
}

// A client still being admitted when the subscription comes back may have
// read its history before the messages missed meanwhile were recorded:
// Resync must neither skip it nor let the messages held for it (newer
// than the missed ones) through first.
func TestResumeResyncDoesNotSkipAnAdmissionInProgress(t *testing.T) {
	f := newResumeFixture(t, 100)
	pos := f.position("k")
	read, release := gate(f)
	admitted := make(chan *session.Session, 1)
	go func() {
		s := session.New(f.h.NewID(), session.Peer{Key: "k", Resume: true, Since: ""}, "test", &fakeTransport{}, 1<<20)
		if err := f.h.Admit(context.Background(), s); err != nil {
			t.Error(err)
		}
		admitted <- s
	}()
	<-read
	id1 := f.id(1) // recorded after the admission's read, missed live
	f.dropNext()
	done := f.h.Resync(context.Background())
	// Lost and back twice: one more read does for both.
	done2 := f.h.Resync(context.Background())
	// Live after the subscription is back: held by the admission.
	id2 := f.id(2)
	f.dispatchNext()
	close(release)
	s := <-admitted
	waitDone(t, done)
	waitDone(t, done2)
	expectFrames(t, s, pos, frame(id1, 1), frame(id2, 2))
	id3 := f.id(3)
	f.dispatchNext()
	expectFrames(t, s, frame(id3, 3))
}

// The same when an earlier Resync is still catching the session up.
func TestResumeResyncDuringAnEarlierResync(t *testing.T) {
	f := newResumeFixture(t, 100)
	s := f.admitResuming("")
	expectFrames(t, s, f.position("k"))
	id1 := f.id(1)
	f.dropNext()
	read, release := gate(f)
	first := f.h.Resync(context.Background())
	<-read
	id2 := f.id(2) // lost again after the first resync read the history
	f.dropNext()
	second := f.h.Resync(context.Background())
	id3 := f.id(3)
	f.dispatchNext()
	close(release)
	waitDone(t, first)
	waitDone(t, second)
	expectFrames(t, s, frame(id1, 1), frame(id2, 2), frame(id3, 3))
	id4 := f.id(4)
	f.dispatchNext()
	expectFrames(t, s, frame(id4, 4))
}

// When the history cannot be read, a resuming client is refused with 1013
// (it retries with the same id: nothing lost) and counted; an old client
// does not need the history and is admitted. Resync closes live resuming
// clients with 1013 for the same reason.
func TestResumeHistoryUnavailableRefuses1013(t *testing.T) {
	f := newResumeFixture(t, 100)
	live := f.admitResuming("")
	payloads(live)
	f.hh.hook(func(context.Context, string, string) (broker.Replay, error) {
		return broker.Replay{}, errors.New("redis: connection refused")
	})
	s := session.New(f.h.NewID(), session.Peer{Key: "k", Resume: true, Since: "0"}, "test", &fakeTransport{}, 1<<20)
	err := f.h.Admit(context.Background(), s)
	var rej *ErrRejected
	if !errors.As(err, &rej) || rej.Code != session.CloseTryAgain {
		t.Fatalf("admit with the history down: %v, want 1013", err)
	}
	if n := len(f.h.Sessions("k")); n != 1 || f.h.Live() != 1 {
		t.Fatalf("refused session registered: sessions=%d live=%d", n, f.h.Live())
	}
	if got := testutil.ToFloat64(f.h.m.Rejections.WithLabelValues(metrics.RejectHistory)); got != 1 {
		t.Fatalf("rejections{history_unavailable} = %v", got)
	}
	if got := testutil.ToFloat64(f.h.m.Resumes.WithLabelValues(metrics.ResumeFailed)); got != 1 {
		t.Fatalf("resumes{failed} = %v", got)
	}
	legacy, _ := admit(t, f.h, "k", 1<<20)
	waitDone(t, f.h.Resync(context.Background()))
	if live.CloseCode() != session.CloseTryAgain || legacy.IsClosed() {
		t.Fatalf("resync with the history down: resuming closed %d, old client closed=%v", live.CloseCode(), legacy.IsClosed())
	}
}
