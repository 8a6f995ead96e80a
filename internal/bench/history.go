package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// redisProbe reads what the history costs in Redis: used_memory, and the
// length and size of the streams wspubsub:h:{<key>} of the run's keys (the
// gateway's naming, documented with FCALL wspubsub_publish; the bench does
// not import the gateway's packages).
type redisProbe struct {
	c    redis.UniversalClient
	keys []string
	idem bool
	cpu0 float64
}

func newRedisProbe(ctx context.Context, cfg Config) (*redisProbe, error) {
	c, err := redisUniversal(ctx, cfg)
	if err != nil {
		return nil, err
	}
	keys := make([]string, cfg.Conns)
	for i := range keys {
		keys[i] = "wspubsub:h:{" + cfg.KeyPrefix + strconv.Itoa(i) + "}"
	}
	return &redisProbe{c: c, keys: keys, idem: !cfg.NoIdempotencyKeys}, nil
}

func (p *redisProbe) close() { p.c.Close() }

func (p *redisProbe) before(ctx context.Context) (*RedisStats, error) {
	used, err := p.used(ctx)
	if err != nil {
		return nil, err
	}
	entries, _, err := p.streams(ctx, false)
	if err != nil {
		return nil, err
	}
	if p.cpu0, err = p.cpu(ctx); err != nil {
		return nil, err
	}
	return &RedisStats{UsedBefore: used, EntriesBefore: entries, IdempotencyKeys: p.idem}, nil
}

func (p *redisProbe) after(ctx context.Context, m *RedisStats) error {
	cpu, err := p.cpu(ctx)
	if err != nil {
		return err
	}
	m.CPUSeconds = cpu - p.cpu0
	used, err := p.used(ctx)
	if err != nil {
		return err
	}
	entries, size, err := p.streams(ctx, true)
	if err != nil {
		return err
	}
	m.UsedAfter, m.Entries, m.StreamBytes = used, entries, size
	if entries > 0 {
		m.StreamBytesPerHeld = float64(size) / float64(entries)
	}
	if d := entries - m.EntriesBefore; d > 0 {
		m.UsedPerHeld = float64(used-m.UsedBefore) / float64(d)
	}
	return nil
}

// used is INFO memory's used_memory (summed over a cluster's masters).
func (p *redisProbe) used(ctx context.Context) (int64, error) {
	v, err := p.info(ctx, "memory", "used_memory")
	return int64(v), err
}

// cpu is the Redis servers' CPU time so far (INFO cpu: used_cpu_user +
// used_cpu_sys, summed over a cluster's masters).
func (p *redisProbe) cpu(ctx context.Context) (float64, error) {
	var total float64
	for _, f := range []string{"used_cpu_sys", "used_cpu_user"} {
		v, err := p.info(ctx, "cpu", f)
		if err != nil {
			return 0, err
		}
		total += v
	}
	return total, nil
}

// info is one numeric INFO field, summed over the servers (one, or a
// cluster's masters).
func (p *redisProbe) info(ctx context.Context, section, field string) (float64, error) {
	var mu sync.Mutex
	var total float64
	err := eachServer(ctx, p.c, func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, section).Result()
		if err != nil {
			return fmt.Errorf("INFO %s: %w", section, err)
		}
		for line := range strings.SplitSeq(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
				f, err := strconv.ParseFloat(v, 64)
				if err != nil {
					return fmt.Errorf("INFO %s %s: %w", section, field, err)
				}
				mu.Lock()
				total += f
				mu.Unlock()
				return nil
			}
		}
		return fmt.Errorf("INFO %s: no %s", section, field)
	})
	return total, err
}

// streams sums XLEN (and, with size, MEMORY USAGE … SAMPLES 0: every
// node counted) over the keys' streams, 1,000 keys per round trip.
func (p *redisProbe) streams(ctx context.Context, size bool) (entries, bytes int64, err error) {
	for start := 0; start < len(p.keys); start += 1000 {
		chunk := p.keys[start:min(start+1000, len(p.keys))]
		pipe := p.c.Pipeline()
		lens := make([]*redis.IntCmd, len(chunk))
		mems := make([]*redis.IntCmd, len(chunk))
		for i, k := range chunk {
			lens[i] = pipe.XLen(ctx, k)
			if size {
				mems[i] = pipe.MemoryUsage(ctx, k, 0)
			}
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return 0, 0, fmt.Errorf("reading the history's length: %w", err)
		}
		for i := range chunk {
			if err := lens[i].Err(); err != nil {
				return 0, 0, fmt.Errorf("XLEN %s: %w", chunk[i], err)
			}
			entries += lens[i].Val()
			if size {
				bytes += mems[i].Val() // 0 for a key that does not exist (nil)
			}
		}
	}
	return entries, bytes, nil
}
