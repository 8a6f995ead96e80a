package bench

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/testenv"
)

// The raw publisher is chosen for a plain Redis URL and plain PUBLISH, and
// its messages arrive whole and in order; a password or durable publishing
// keeps go-redis.
func TestRawPublisherPublishesInOrder(t *testing.T) {
	ctx := context.Background()
	srv := testenv.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	sub := rdb.Subscribe(ctx, "ch")
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	pub, err := newPublisher(ctx, Config{RedisURL: srv.URL(), Channel: "ch"})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.close()
	if _, ok := pub.(*rawPublisher); !ok {
		t.Fatalf("plain PUBLISH on a plain URL uses %T", pub)
	}
	var msgs [][]byte
	for i := range 3000 { // more than one read buffer of replies
		msgs = append(msgs, fmt.Appendf(nil, `{"recipients":["k%d"],"data":"%s"}`, i, strings.Repeat("x", i%300)))
	}
	for start := 0; start < len(msgs); start += 1024 {
		if err := pub.publish(ctx, msgs[start:min(start+1024, len(msgs))]); err != nil {
			t.Fatal(err)
		}
	}
	ch := sub.Channel()
	for i, m := range msgs {
		if got := <-ch; got.Payload != string(m) {
			t.Fatalf("message %d arrived as %.60q, want %.60q", i, got.Payload, m)
		}
	}
	durable, err := newPublisher(ctx, Config{RedisURL: srv.URL(), Channel: "ch", Durable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer durable.close()
	if _, ok := durable.(*redisPublisher); !ok {
		t.Fatalf("durable publishing uses %T, want go-redis", durable)
	}
}

// A refused PUBLISH is an error naming Redis's answer.
func TestRawPublisherRefusalIsAnError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		bufio.NewReader(c).ReadString('\n')
		c.Write([]byte("-ERR not today\r\n"))
	}()
	p, err := newRawPublisher(context.Background(), &redis.Options{Network: "tcp", Addr: ln.Addr().String()}, "ch")
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	if err := p.publish(context.Background(), [][]byte{[]byte("{}")}); err == nil || !strings.Contains(err.Error(), "not today") {
		t.Fatalf("got %v, want Redis's refusal", err)
	}
}

// BenchmarkPublishBatch: the client's cost of a 1,024-message batch of
// PUBLISH, go-redis's pipeline against the raw publisher (the elapsed time
// includes Redis's work; the allocations are the client's).
func BenchmarkPublishBatch(b *testing.B) {
	ctx := context.Background()
	srv := testenv.Redis(b)
	msg := []byte(`{"recipients":["bench-1234"],"data":{"seq":123456,"t":1764864000123456789}}`)
	batch := make([][]byte, 1024)
	for i := range batch {
		batch[i] = msg
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	raw, err := newRawPublisher(ctx, rdb.Options(), "nobody")
	if err != nil {
		b.Fatal(err)
	}
	defer raw.close()
	for _, p := range []struct {
		name string
		pub  publisher
	}{{"go-redis", &redisPublisher{c: rdb, channel: "nobody"}}, {"raw", raw}} {
		b.Run(p.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := p.pub.publish(ctx, batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/msg")
		})
	}
}
