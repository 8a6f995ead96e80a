package websocket

// The close frame goes out after everything queued before the close (a
// defect found by a review of the writer pool: a message queued while a
// flush was writing went out after the close frame).

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/session"
)

// gateConn's first Write waits until the test releases it (a write in
// progress, as a writev is); deadlines on writes are ignored.
type gateConn struct {
	net.Conn
	entered, release chan struct{}
	once             sync.Once
}

func (g *gateConn) Write(b []byte) (int, error) {
	g.once.Do(func() { close(g.entered); <-g.release })
	return g.Conn.Write(b)
}

func (g *gateConn) SetWriteDeadline(time.Time) error { return nil }

// Closed's contract: "the close frame goes out after whatever is still
// queued". A message queued (before the close) while a flush is writing
// what it drained must not follow the close frame.
func TestMessageQueuedBeforeCloseGoesBeforeTheCloseFrame(t *testing.T) {
	h := newHarness(t, keystore.NewMemory(), hub.Config{}, Config{})
	client, s := h.tcpPair()
	g := &gateConn{Conn: s, entered: make(chan struct{}), release: make(chan struct{})}
	c := &conn{srv: h.srv, nc: g, rd: s}
	c.sess = session.New(1, session.Peer{Key: "k"}, Name, nopWake{}, 1<<30)
	for i := range 4 {
		c.sess.Deliver(session.NewMessage(fmt.Appendf(nil, `{"data":%d}`, i)))
	}
	done := make(chan struct{})
	go func() { defer close(done); c.flush(newWriter()) }()
	<-g.entered // the flush drained 0..3 and is writing them
	c.sess.Deliver(session.NewMessage([]byte(`{"data":4}`)))
	c.sess.Close(session.CloseNormal, "")
	c.Closed(session.CloseNormal, "") // as the session's transport would be told
	close(g.release)
	<-done
	pr := &peer{t: t, c: client}
	var got []string
	for {
		hd, b, err := pr.read(patience)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		if hd.OpCode == ws.OpClose {
			break
		}
		got = append(got, string(b))
	}
	if len(got) != 5 {
		hd, b, err := pr.read(patience)
		t.Fatalf("before the close frame: %q; want 0..4 (after it: %v %q %v)", got, hd.OpCode, b, err)
	}
}
