//go:build linux

package bench

import (
	"io"
	"net"
	"testing"
	"time"
)

// A stamped reader returns the bytes a plain read would, each read with
// the kernel's receive stamp.
func TestStampedReaderStampsWhatItReads(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	s := newStampedReader(client)
	if s == nil {
		t.Fatal("no stamped reader for a TCP connection")
	}
	// The kernel turns stamping on for the whole machine lazily (a
	// deferred static key): the first segments may come unstamped.
	// How long that takes is the machine's: the tries are bounded by time
	// (patience), not by a count a loaded machine could run through first.
	before := time.Now().Add(-time.Minute)
	giveUp := time.Now().Add(patience)
	buf := make([]byte, 16)
	for i := 0; s.at.IsZero(); i++ {
		if time.Now().After(giveUp) {
			t.Fatalf("no segment stamped in %d tries over %v", i, patience)
		}
		if i > 0 {
			time.Sleep(time.Millisecond) // let the kernel's deferred work run
		}
		if _, err := server.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		n, err := io.ReadAtLeast(s, buf, 5)
		if err != nil || string(buf[:n]) != "hello" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
	}
	if s.at.Before(before) || s.at.After(time.Now().Add(time.Minute)) {
		t.Fatalf("stamp %v, read at %v", s.at, time.Now())
	}
	server.Close()
	if _, err := s.Read(buf); err != io.EOF {
		t.Fatalf("after the peer closed: %v, want EOF", err)
	}
	if newStampedReader(nil) != nil {
		t.Fatal("a stamped reader for no connection")
	}
}

func TestStampOfIgnoresWhatItDoesNotKnow(t *testing.T) {
	for _, oob := range [][]byte{nil, {1, 2, 3}, make([]byte, 64)} {
		if at := stampOf(oob); !at.IsZero() {
			t.Errorf("stampOf(%v) = %v", oob, at)
		}
	}
}
