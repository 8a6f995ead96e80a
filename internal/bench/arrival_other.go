//go:build !linux

package bench

import (
	"io"
	"net"
	"time"
)

// stampedReader is Linux-only (SO_TIMESTAMPNS); elsewhere frames have no
// arrival stamp.
type stampedReader struct{ at time.Time }

func (s *stampedReader) Read(p []byte) (int, error) { return 0, io.EOF }

func newStampedReader(net.Conn) *stampedReader { return nil }
