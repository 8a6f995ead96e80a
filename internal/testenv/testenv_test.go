package testenv

import (
	"syscall"
	"testing"
)

// A Redis whose first port is taken between the choice and its bind (here
// a socket bound there, not listening: it takes the port and accepts
// nothing) is started on another port instead of failing the test after a
// minute.
func TestRedisMovesOffAPortTakenBeforeItsBind(t *testing.T) {
	taken := FreePort(t)
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: taken, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	picks := 0
	s := redisOn(t, func(t testing.TB) int {
		picks++
		if picks == 1 {
			return taken
		}
		return FreePort(t)
	}, "--appendonly", "no")
	if s.Port == taken || picks < 2 {
		t.Fatalf("started on port %d after %d picks; %d was taken", s.Port, picks, taken)
	}
	s.Stop()
	s.Start() // a restart keeps the port it got
	if picks != 2 {
		t.Fatalf("a restart picked a new port (%d picks)", picks)
	}
}
