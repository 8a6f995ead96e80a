package websocket

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/wspubsub/wspubsub/internal/hub"
	"github.com/wspubsub/wspubsub/internal/keystore"
	"github.com/wspubsub/wspubsub/internal/metrics"
	"github.com/wspubsub/wspubsub/internal/session"
)

// tcpPair returns a loopback TCP connection whose peer discards everything.
func tcpPair(b *testing.B) net.Conn {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		c, err := l.Accept()
		if err == nil {
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(); l.Close() })
	return c
}

// BenchmarkFrameWrite measures the cost per frame of a flush carrying k
// queued frames in one writev: the cost per socket write dominates, so it
// falls with k.
func BenchmarkFrameWrite(b *testing.B) {
	m := metrics.New()
	h := hub.New(hub.Config{Store: keystore.NewMemory(), Metrics: m})
	srv := NewServer(context.Background(), Config{Hub: h, Metrics: m})
	msg := session.NewMessage([]byte(`{"data":{"s":12345,"t":1732472400000000000}}`))
	for _, k := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("frames-per-write=%d", k), func(b *testing.B) {
			nc := tcpPair(b)
			c := &conn{srv: srv, nc: nc}
			c.raw, _ = nc.(*net.TCPConn).SyscallConn()
			c.sess = session.New(1, session.Peer{Key: "k"}, Name, nopWake{}, 1<<30)
			w := newWriter()
			b.ReportAllocs()
			for b.Loop() {
				for range k {
					c.sess.Deliver(msg)
				}
				c.flush(w)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*k), "ns/frame")
		})
	}
}

type nopWake struct{}

func (nopWake) Wake()              {}
func (nopWake) KeepAlive()         {}
func (nopWake) Closed(int, string) {}
