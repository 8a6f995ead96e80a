package ratelimit

import (
	"testing"
	"time"
)

func TestBurstRefillAndForgetting(t *testing.T) {
	l := New(10, 2)
	now := time.Unix(1000, 0)
	for i := range 100 {
		l.Take(string(rune('a'+i%26))+string(rune('a'+i/26)), now)
	}
	if l.Len() != 100 {
		t.Fatalf("len %d", l.Len())
	}
	l.Take("x", now.Add(2*time.Second)) // the others refilled long ago: forgotten
	if l.Len() != 1 {
		t.Fatalf("after the sweep len %d, want 1", l.Len())
	}
	at := now.Add(2 * time.Second)
	if !l.Take("x", at) || l.Take("x", at) {
		t.Fatal("burst of 2 not honoured")
	}
	if l.Has("x", at) {
		t.Fatal("Has after the burst was spent")
	}
	if !l.Take("x", at.Add(100*time.Millisecond)) {
		t.Fatal("no refill at 10/s after 100 ms")
	}
}
