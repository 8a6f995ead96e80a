package keystore

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"

	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"
)

// Reason turns a store error into one short line for /readyz and log
// lines, such as "key store unreachable: connection refused". A driver's
// error can be long: MongoDB's names every server of its topology with
// each one's last error. The whole error is still for debug logs.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	var pe *os.PathError // first: a file's errno is no network's
	if errors.As(err, &pe) {
		return "key store unavailable: " + pe.Err.Error()
	}
	if cause := netCause(err); cause != "" {
		return "key store unreachable: " + cause
	}
	msg := err.Error()
	if strings.Contains(msg, "auth error") || strings.Contains(msg, "Authentication failed") { // MongoDB's
		return "key store unavailable: authentication failed (check the user and password)"
	}
	if i := strings.Index(msg, ", current topology:"); i >= 0 { // not wrapped as expected: cut it anyway
		msg = msg[:i]
	}
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	if len(msg) > 160 {
		msg = msg[:160] + "…"
	}
	if !strings.HasPrefix(msg, ErrUnavailable.Error()) {
		msg = "key store unavailable: " + msg
	}
	return msg
}

// netCause is the network reason of err ("connection refused", "no such
// host", "timed out"), or "" when it is not a network error.
func netCause(err error) string {
	var sse topology.ServerSelectionError
	if errors.As(err, &sse) {
		// The servers' last errors say why; the wrapped one only that
		// selection timed out.
		for _, s := range sse.Desc.Servers {
			if s.LastError != nil {
				if c := netCause(s.LastError); c != "" {
					return c
				}
			}
		}
		return "no server answered"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		if dns.IsNotFound {
			return "no such host " + dns.Name
		}
		return "name lookup failed: " + dns.Err
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		return "timed out"
	}
	return ""
}

// RedactURI returns a connection string without its credentials, for logs.
func RedactURI(uri string) string { return redactURI(uri) }
