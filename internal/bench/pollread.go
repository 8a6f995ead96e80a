//go:build linux

package bench

// Reading many WebSocket connections without a goroutine each. With one
// reader goroutine per connection every frame cost the tool a wake-up of
// that goroutine and two recvmsg calls (the frame, then EAGAIN before it
// parked again): about as much CPU per message as the gateway spent
// sending it, on the same two cores, so the tool's own load was part of
// the latency it measured. Here a few goroutines each wait on an epoll set
// (level-triggered, itself waited on in Go's netpoller, so no thread
// blocks in epoll_wait) and read each ready socket once per wake-up.

import (
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pollReaders is a worker's set of epoll readers.
type pollReaders struct {
	sets []*pollSet
	next atomic.Uint32 // round robin
}

// pollSet is one epoll set and the goroutine that serves it.
type pollSet struct {
	w    *Worker
	epfd int
	file *os.File
	rc   syscall.RawConn

	// mu guards conns, seq and each connection's over. It is never held
	// while a connection's lock is taken (frames takes it), so the worker
	// may finish a connection while holding that connection's lock.
	mu    sync.Mutex
	conns map[uint32]*polled // by registration number
	seq   uint32
	buf   []byte // read buffer, shared by the set's connections (its goroutine's)
}

// polled is one connection served by a pollSet.
type polled struct {
	c    *wconn
	nc   net.Conn
	s    *stampedReader
	set  *pollSet
	id   uint32
	done chan struct{}
	// mu is held while its frames are handled: once closing has it, none
	// is handled after done is closed (a reconnect reads what they set).
	// Taken before the connection's own lock, never while holding it.
	mu   sync.Mutex
	left []byte // the start of a frame cut short by the last read
	over bool   // finished (under the set's mu)
}

// newPollReaders starts up to GOMAXPROCS epoll readers; nil if epoll is
// not available (connections then get a goroutine each).
func newPollReaders(w *Worker) *pollReaders {
	r := &pollReaders{}
	for range max(1, runtime.GOMAXPROCS(0)) {
		p, err := newPollSet(w)
		if err != nil {
			break
		}
		r.sets = append(r.sets, p)
	}
	if len(r.sets) == 0 {
		return nil
	}
	return r
}

func newPollSet(w *Worker) (*pollSet, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, err
	}
	f := os.NewFile(uintptr(epfd), "epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	p := &pollSet{w: w, epfd: epfd, file: f, rc: rc, conns: map[uint32]*polled{}, buf: make([]byte, 64<<10)}
	go p.run()
	return p, nil
}

// add serves nc (read through s) from one of the sets; nil if it could not
// be added (the caller reads it with a goroutine). The worker's wg counts
// it until it is finished.
func (r *pollReaders) add(c *wconn, nc net.Conn, s *stampedReader, done chan struct{}) *polled {
	p := r.sets[int(r.next.Add(1))%len(r.sets)]
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	pc := &polled{c: c, nc: nc, s: s, set: p, id: p.seq, done: done}
	var err error
	if cerr := s.rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(pc.id)}
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	}); cerr != nil || err != nil {
		return nil
	}
	p.conns[pc.id] = pc
	p.w.wg.Add(1)
	return pc
}

// forget takes pc's socket out of its set, if the socket is still open (a
// closed descriptor left by itself, and its number may already be another
// connection's).
func (pc *polled) forget(p *pollSet) {
	_ = pc.s.rc.Control(func(fd uintptr) {
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// finish ends pc's reading once: it leaves the set and its done channel
// is closed.
func (p *pollSet) finish(pc *polled) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.over {
		return
	}
	pc.over = true
	pc.forget(p)
	delete(p.conns, pc.id)
	close(pc.done)
	p.w.wg.Done()
}

// closing is called once the client closed pc's socket itself (not under
// the connection's lock): it is finished once no frame of it is being
// handled.
func (pc *polled) closing() {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.set.finish(pc)
}

func (p *pollSet) run() {
	events := make([]unix.EpollEvent, 256)
	var ready []*polled
	var n int
	var werr error
	collect := func(fd uintptr) bool { // false: nothing ready, wait for the set to be readable
		for {
			n, werr = unix.EpollWait(int(fd), events, 0)
			if !errors.Is(werr, unix.EINTR) {
				return n > 0 || werr != nil
			}
		}
	}
	for {
		if err := p.rc.Read(collect); err != nil || werr != nil {
			return // closed by stop
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			if pc := p.conns[uint32(ev.Fd)]; pc != nil {
				ready = append(ready, pc)
			}
		}
		p.mu.Unlock()
		for i, pc := range ready {
			p.serve(pc)
			ready[i] = nil
		}
		ready = ready[:0]
	}
}

// serve reads pc once (the set is level-triggered: what a read leaves is
// reported again) and handles the whole frames read.
func (p *pollSet) serve(pc *polled) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	p.mu.Lock()
	over := pc.over
	p.mu.Unlock()
	if over {
		return
	}
	k := copy(p.buf, pc.left)
	m, err := pc.s.tryRead(p.buf[k:])
	if errors.Is(err, unix.EAGAIN) {
		return
	}
	if err != nil || m == 0 {
		p.w.readFailed(pc.c, pc.nc)
		p.finish(pc)
		return
	}
	now := time.Now() // per read: a socket served late in a batch was read late
	arrived := pc.s.at
	pc.s.at = time.Time{}
	data := p.buf[:k+m]
	used, need, end := p.w.frames(pc.c, pc.nc, data, now, arrived, pc.done)
	if end {
		p.finish(pc)
		return
	}
	pc.left = append(pc.left[:0], data[used:]...)
	if need > len(p.buf) {
		p.buf = make([]byte, need+len(p.buf))
	}
	if cap(pc.left) > 4<<10 && len(pc.left) == 0 {
		pc.left = nil // a large frame's room is not kept by an idle connection
	}
}

// stop ends the readers' goroutines (their connections are closed by the
// worker).
func (r *pollReaders) stop() {
	for _, p := range r.sets {
		_ = p.file.Close()
	}
}
