package websocket

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/session"
)

// A socket that has not sent its request head when the listener closes is
// closed with it (net/http's shutdown does not know it), and one that sends
// an incomplete head is closed at the handshake timeout, not handed on.
func TestSniffedSocketsEndWithTheListener(t *testing.T) {
	h := newHarness(t, keystore.NewMemory("k"), hub.Config{}, Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpLn := h.srv.Listen(ln, "/ws", func(*Handshake) (session.Peer, int) { return session.Peer{Key: "k"}, 0 })
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	partial, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	_, _ = io.WriteString(partial, "GET /ws HTTP/1.1\r\nHost: x\r\n")
	time.Sleep(50 * time.Millisecond) // both accepted and sniffing
	_ = ln.Close()
	for name, c := range map[string]net.Conn{"silent": silent, "partial": partial} {
		_ = c.SetReadDeadline(time.Now().Add(patience))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("%s socket still open after the listener closed: %v", name, err)
		}
	}
	if _, err := httpLn.Accept(); err == nil {
		t.Error("the net/http listener still accepts")
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
