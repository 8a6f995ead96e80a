//go:build linux

package bench

// Arrival times from the kernel: with the gateway, Redis and the load tool
// on the same cores, a frame can sit in the client's socket for
// milliseconds because the tool's reader was not scheduled, and that wait
// is the tool's, not the gateway's. SO_TIMESTAMPNS has the kernel stamp
// each segment as it reaches the client socket (on loopback: as the
// gateway's write is received), and recvmsg hands the stamp of the last
// segment read over with the bytes, so the tool reports both: the latency
// to its reader, and the latency to the client's socket.

import (
	"encoding/binary"
	"io"
	"net"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// stampedReader reads a TCP socket with recvmsg, keeping the kernel's
// receive time stamp of what the last Read returned.
type stampedReader struct {
	rc  syscall.RawConn
	oob []byte
	at  time.Time // stamp of the last segment the last Read returned; zero if none came
	fn  func(fd uintptr) bool
	// tryFn is recv for tryRead: it never waits for the poller.
	tryFn func(fd uintptr) bool
	buf   []byte
	n     int
	err   error
}

// newStampedReader turns on receive time stamps for nc; nil when nc is not
// a TCP connection or the kernel refuses.
func newStampedReader(nc net.Conn) *stampedReader {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		return nil
	}
	s := &stampedReader{rc: rc, oob: make([]byte, unix.CmsgSpace(int(unsafe.Sizeof(unix.Timespec{}))))}
	s.fn = s.recv
	s.tryFn = func(fd uintptr) bool {
		if !s.recv(fd) {
			s.err = unix.EAGAIN
		}
		return true
	}
	return s
}

func (s *stampedReader) recv(fd uintptr) bool {
	n, oobn, _, _, err := unix.Recvmsg(int(fd), s.buf, s.oob, 0)
	for err == unix.EINTR {
		n, oobn, _, _, err = unix.Recvmsg(int(fd), s.buf, s.oob, 0)
	}
	if err == unix.EAGAIN {
		return false // nothing yet: wait for the poller
	}
	s.n, s.err = n, err
	s.at = stampOf(s.oob[:oobn])
	return true
}

// Read implements io.Reader; the socket's read deadline applies.
func (s *stampedReader) Read(p []byte) (int, error) {
	s.buf, s.n, s.err = p, 0, nil
	if err := s.rc.Read(s.fn); err != nil {
		return 0, err
	}
	s.buf = nil
	if s.err != nil {
		return 0, s.err
	}
	if s.n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return s.n, nil
}

// stampOf finds SCM_TIMESTAMPNS in a control message buffer (one
// cmsghdr, then a timespec) without allocating.
func stampOf(oob []byte) time.Time {
	const hdr = int(unsafe.Sizeof(unix.Cmsghdr{}))
	for len(oob) >= hdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			return time.Time{}
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && l >= hdr+16 {
			sec := int64(binary.NativeEndian.Uint64(oob[hdr:]))
			nsec := int64(binary.NativeEndian.Uint64(oob[hdr+8:]))
			return time.Unix(sec, nsec)
		}
		next := unix.CmsgSpace(l - hdr)
		if next >= len(oob) {
			break
		}
		oob = oob[next:]
	}
	return time.Time{}
}

// tryRead reads what the socket holds now without waiting for more:
// unix.EAGAIN when it holds nothing, 0 bytes and no error at its end.
func (s *stampedReader) tryRead(p []byte) (int, error) {
	s.buf, s.n, s.err = p, 0, nil
	if err := s.rc.Read(s.tryFn); err != nil {
		return 0, err
	}
	s.buf = nil
	return s.n, s.err
}
