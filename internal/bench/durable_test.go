package bench

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/testenv"
)

// The durable publisher sends its messages in FCALL
// wspubsub_publish_batch, durableBatch at a time, checks each message's
// answer, and falls back to one FCALL wspubsub_publish per message on
// functions without the batch form (an older gateway's).
func TestDurablePublisherBatches(t *testing.T) {
	ctx := context.Background()
	for _, older := range []bool{false, true} {
		t.Run(fmt.Sprintf("older functions %v", older), func(t *testing.T) {
			srv := testenv.Redis(t)
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
			defer rdb.Close()
			lib := broker.HistoryLibrary(broker.HistoryConfig{Size: 10, TTL: time.Minute}, "ch", false)
			if older {
				// Only the one-message function, as before the batch form.
				lib = "#!lua name=wspubsub\n" +
					"redis.register_function('wspubsub_publish', function(keys, args) redis.call('PUBLISH', 'ch', args[1]) return { 0, 'e.1-0' } end)"
			}
			if err := rdb.FunctionLoadReplace(ctx, lib).Err(); err != nil {
				t.Fatal(err)
			}
			sub := rdb.Subscribe(ctx, "ch", broker.RecordedChannel("ch"))
			defer sub.Close()
			for range 2 {
				if _, err := sub.Receive(ctx); err != nil {
					t.Fatal(err)
				}
			}
			p := &redisPublisher{c: rdb, channel: "ch", durable: true, idem: "t-"}
			var msgs [][]byte
			for i := range 2*durableBatch + 3 {
				msgs = append(msgs, fmt.Appendf(nil, `{"recipients":["k%d"],"data":%d}`, i%7, i))
			}
			if err := p.publish(ctx, msgs); err != nil {
				t.Fatal(err)
			}
			if p.single != older || p.n != uint64(len(msgs)) {
				t.Fatalf("single %v, %d idempotency keys, want %v and %d", p.single, p.n, older, len(msgs))
			}
			ch := sub.Channel()
			for i := range msgs {
				select {
				case m := <-ch:
					if !strings.Contains(m.Payload, fmt.Sprintf(`"data":%d}`, i)) {
						t.Fatalf("message %d published as %s", i, m.Payload)
					}
				case <-time.After(patience):
					t.Fatalf("message %d not published", i)
				}
			}
			if older {
				return
			}
			if n, _ := rdb.Exists(ctx, "wspubsub:i:{k0}:t-1").Result(); n != 1 {
				t.Fatal("no idempotency record for the first message")
			}
			err := p.publish(ctx, [][]byte{[]byte(`{"recipients":["k1"],"data":1}`), []byte(`{"recipients":["k1"]}`)})
			if err == nil || !strings.Contains(err.Error(), `no "data"`) {
				t.Fatalf("a refused message: %v", err)
			}
		})
	}
}
