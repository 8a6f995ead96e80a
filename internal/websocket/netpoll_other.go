//go:build !linux

package websocket

import "net"

// Without epoll every connection reads on its own goroutine.

type poller struct{}

type polledSocket struct {
	net.Conn
	c *conn
}

func (s *Server) pollable(*conn) bool { return false }
func (p *poller) add(*conn) bool      { return false }
func (c *conn) unpoll()               {}
