//go:build !linux

package bench

import "net"

// pollReaders is Linux-only (epoll); elsewhere every connection has a
// reading goroutine.
type pollReaders struct{}

type polled struct{}

func newPollReaders(*Worker) *pollReaders { return nil }

func (r *pollReaders) add(*wconn, net.Conn, *stampedReader, chan struct{}) *polled { return nil }

func (pc *polled) closing() {}

func (r *pollReaders) stop() {}
