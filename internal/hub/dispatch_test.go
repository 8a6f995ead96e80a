package hub

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wspubsub/wspubsub/internal/envelope"
)

// A plain message (Dispatch: anyone's PUBLISH) carries no id, whatever it
// says: its "wspubsub_ids" member, well-formed or not, is removed and
// counted, and the message delivered without id. A forged id of the key's
// epoch far in the future would otherwise become a resuming client's
// position, and every recorded message after it would look older and be
// dropped. Only DispatchRecorded honours ids.
func TestDispatchPlainIDsAreNotTrusted(t *testing.T) {
	f := newResumeFixture(t, 100)
	res := f.admitResuming("")
	legacy, _ := admit(t, f.h, "k", 1<<20)
	payloads(res) // the position frame
	id1 := f.id(1)
	f.dispatchNext()
	expectFrames(t, res, frame(id1, 1))
	expectFrames(t, legacy, `{"data":1}`)
	stripped := func() float64 {
		return testutil.ToFloat64(f.h.m.Stripped.WithLabelValues(envelope.ReasonUntrustedIDs))
	}

	epoch, _, _ := strings.Cut(id1, ".")
	f.h.Dispatch([]byte(`{"wspubsub_ids":["` + epoch + `.99999999999999-0"],"recipients":["k"],"data":"forged"}`))
	f.h.Dispatch([]byte(`{"recipients":["k"],"wspubsub_ids":5,"data":"not a list"}`))
	expectFrames(t, res, `{"data":"forged"}`, `{"data":"not a list"}`)
	expectFrames(t, legacy, `{"data":"forged"}`, `{"data":"not a list"}`)
	if got := stripped(); got != 2 {
		t.Fatalf("stripped{%s} = %v, want 2", envelope.ReasonUntrustedIDs, got)
	}

	var want []string
	for n := 2; n <= 4; n++ {
		id := f.id(n)
		f.dispatchNext()
		want = append(want, frame(id, n))
	}
	expectFrames(t, res, want...)
	if got := stripped(); got != 2 {
		t.Fatalf("recorded messages counted as stripped: %v", got)
	}
	if got := testutil.ToFloat64(f.h.m.Drops.WithLabelValues(envelope.ReasonBadIDs)); got != 0 {
		t.Fatalf("drops{bad_ids} = %v: a plain message's ids are not even checked", got)
	}

	// The same recorded form through DispatchRecorded is trusted; a
	// malformed one there is dropped.
	f.h.DispatchRecorded([]byte(`{"recipients":["k"],"wspubsub_ids":5,"data":"bad"}`))
	expectFrames(t, res)
	if got := testutil.ToFloat64(f.h.m.Drops.WithLabelValues(envelope.ReasonBadIDs)); got != 1 {
		t.Fatalf("drops{bad_ids} = %v, want 1", got)
	}
}

// A plain message whose first member is "id" would pass, for a resuming
// client, for a recorded message with that id (the client reads the id
// from the frame's first bytes) and move its position: resuming sessions
// get the same JSON with a space after the brace; others get it as
// published, and a recorded message keeps its own id first.
func TestDispatchPlainIDMemberIsNotAPosition(t *testing.T) {
	f := newResumeFixture(t, 100)
	res := f.admitResuming("")
	legacy, _ := admit(t, f.h, "k", 1<<20)
	payloads(res) // the position frame
	f.h.Dispatch([]byte(`{"recipients":["k"],"id":"e.99999999999999-0","data":1}`))
	f.h.Dispatch([]byte(`{"broadcast":true,"id":7,"data":2}`))
	f.h.Dispatch([]byte(`{"recipients":["k"],"data":3,"id":"e.1-0"}`))
	expectFrames(t, res, `{ "id":"e.99999999999999-0","data":1}`, `{ "id":7,"data":2}`, `{"data":3,"id":"e.1-0"}`)
	expectFrames(t, legacy, `{"id":"e.99999999999999-0","data":1}`, `{"id":7,"data":2}`, `{"data":3,"id":"e.1-0"}`)

	r, err := f.b.Record(context.Background(), []byte(`{"recipients":["k"],"id":"app","data":4}`), "")
	if err != nil {
		t.Fatal(err)
	}
	f.dispatchNext()
	expectFrames(t, res, `{"id":"`+r.IDs[0]+`","id":"app","data":4}`)
	expectFrames(t, legacy, `{"id":"app","data":4}`)
}
