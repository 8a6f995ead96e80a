//go:build !linux

package websocket

import "time"

// Without epoll every connection reads on its own goroutine.

type poller struct{}

func (s *Server) pollable(*conn) bool             { return false }
func (p *poller) add(*conn) bool                  { return false }
func (c *conn) unpoll()                           {}
func (c *conn) closeSocket() error                { return c.nc.Close() }
func (c *conn) setReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }
