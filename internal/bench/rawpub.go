package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/broker"
)

// rawPublisher sends plain PUBLISHes as raw RESP on one connection: a
// batch is one write of every command, then a read of every reply. A
// go-redis pipeline spends about 0.3 µs and 4 allocations of the client's
// CPU per command (BenchmarkPublishBatch): under a burst the load tool
// shares the gateway's cores, so what the tool spends is taken from what
// it measures. It serves the common set-up only (one Redis, no password,
// no TLS, plain PUBLISH); everything else goes through redisPublisher.
type rawPublisher struct {
	conn    net.Conn
	r       *bufio.Reader
	buf     []byte
	channel string
}

// newRawPublisher returns nil when opt needs what only go-redis does here
// (a password, TLS).
func newRawPublisher(ctx context.Context, opt *redis.Options, channel string) (*rawPublisher, error) {
	if opt.Password != "" || opt.Username != "" || opt.TLSConfig != nil {
		return nil, nil
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, opt.Network, opt.Addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to Redis: %w", err)
	}
	return &rawPublisher{conn: c, r: bufio.NewReaderSize(c, 64<<10), channel: channel}, nil
}

func (p *rawPublisher) publish(ctx context.Context, msgs [][]byte) error {
	b := p.buf[:0]
	for _, m := range msgs {
		b = broker.AppendArray(b, 3)
		b = broker.AppendBulk(b, "PUBLISH")
		b = broker.AppendBulk(b, p.channel)
		b = broker.AppendBulk(b, m)
	}
	p.buf = b
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Minute)
	}
	p.conn.SetDeadline(deadline)
	if _, err := p.conn.Write(b); err != nil {
		return fmt.Errorf("PUBLISH: %w", err)
	}
	for range msgs {
		line, err := p.r.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("PUBLISH: reading the reply: %w", err)
		}
		if line[0] != ':' {
			return fmt.Errorf("PUBLISH: %.200s", line)
		}
	}
	return nil
}

func (p *rawPublisher) close() { p.conn.Close() }
