package gateway

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
)

func TestListenerBoundsSocketsInAllAndPerAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var refusedAll, refusedAddr atomic.Int32
	l := &limitListener{Listener: ln, max: 5, perAddr: 3, byAddr: map[string]int{},
		exempt: func(a netip.Addr) bool { return a == netip.MustParseAddr("127.0.0.2") },
		refused: func(perAddr bool) {
			if perAddr {
				refusedAddr.Add(1)
			} else {
				refusedAll.Add(1)
			}
		}}
	defer l.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(src string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// 127.0.0.1 gets 3 of its 5 attempts; the exempt 127.0.0.2 takes the
	// remaining 2 of the 5 in all, then is refused too.
	for range 5 {
		defer dial("127.0.0.1").Close()
	}
	for range 3 {
		defer dial("127.0.0.2").Close()
	}
	// The 8th dial's accept decides after the refusals above: wait for 5.
	var got []net.Conn
	for range 5 {
		got = append(got, <-accepted)
	}
	if l.Open() != 5 {
		t.Fatalf("open %d, want 5", l.Open())
	}
	c := dial("127.0.0.3") // over the bound in all: refused
	defer c.Close()
	one := make([]byte, 1)
	if _, err := c.Read(one); err == nil {
		t.Fatal("a socket over the bound was kept")
	}
	if refusedAddr.Load() != 2 || refusedAll.Load() != 2 {
		t.Fatalf("refused per address %d, in all %d", refusedAddr.Load(), refusedAll.Load())
	}
	got[0].Close()
	got[0].Close() // closing twice gives one slot back
	if l.Open() != 4 {
		t.Fatalf("open %d after one close, want 4", l.Open())
	}
}
