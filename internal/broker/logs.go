package broker

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClientLogEvery is how often one go-redis message may be logged: while a
// Redis is unreachable, go-redis repeats the same line several times a
// second (every pool dial that fails).
const ClientLogEvery = 10 * time.Second

// RouteClientLogs sends go-redis's own log lines through log, at warn
// level, at most one line per distinct message per ClientLogEvery (the
// next one says how many were suppressed). Without it go-redis prints
// unformatted lines on stderr that bypass --log-format json.
//
// go-redis has a single logger for the whole process (redis.SetLogger):
// call this once, at start-up of whatever uses Redis, not at package init
// (importing the package must not change a process's logging). The last
// call wins.
func RouteClientLogs(log *slog.Logger) {
	redis.SetLogger(&clientLogger{log: log, lines: newLineLimiter(ClientLogEvery, time.Now)})
}

// clientLogger implements go-redis's logging interface.
type clientLogger struct {
	log   *slog.Logger
	lines *lineLimiter
}

// Printf implements go-redis's internal.Logging. Lines are keyed by their
// format, so those differing only in a count or an address are one message.
func (l *clientLogger) Printf(_ context.Context, format string, v ...any) {
	ok, suppressed := l.lines.allow(format)
	if !ok {
		return
	}
	msg := strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: ")
	args := []any{"source", "go-redis"}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	// The caller's context may be cancelled already: the line is still due.
	l.log.Log(context.Background(), slog.LevelWarn, "redis client: "+msg, args...)
}

// lineLimiter lets at most one line of each message through per interval
// and counts the others. Its memory is bounded: messages are few (fixed
// strings of a library or of this package), and past maxLines the stale
// ones are forgotten.
type lineLimiter struct {
	every time.Duration
	now   func() time.Time

	mu    sync.Mutex
	lines map[string]*lineState
}

type lineState struct {
	last       time.Time
	suppressed int
}

const maxLines = 256

func newLineLimiter(every time.Duration, now func() time.Time) *lineLimiter {
	return &lineLimiter{every: every, now: now, lines: map[string]*lineState{}}
}

// allow reports whether a line of msg may be written now and, if so, how
// many were held back since the last one written.
func (l *lineLimiter) allow(msg string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	st := l.lines[msg]
	if st == nil {
		if len(l.lines) >= maxLines {
			l.forget(now)
		}
		l.lines[msg] = &lineState{last: now}
		return true, 0
	}
	if now.Sub(st.last) < l.every {
		st.suppressed++
		return false, 0
	}
	suppressed, st.suppressed, st.last = st.suppressed, 0, now
	return true, suppressed
}

// forget drops the messages quiet for an interval, or all when none is
// (under l.mu); at worst a count of suppressed lines is lost.
func (l *lineLimiter) forget(now time.Time) {
	for msg, st := range l.lines {
		if now.Sub(st.last) >= l.every {
			delete(l.lines, msg)
		}
	}
	if len(l.lines) >= maxLines {
		clear(l.lines)
	}
}
