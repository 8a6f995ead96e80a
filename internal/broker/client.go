package broker

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// NewClient returns a Redis client for another part of the gateway
// (presence) on the same --redis-url as the broker: a single server's URL,
// or with cluster the seeds of a Redis Cluster (as NewRedis reads them).
// Its pool is its own, so that its commands never wait behind the
// broker's.
func NewClient(url string, cluster bool, poolSize int) (redis.UniversalClient, error) {
	if cluster {
		copt, err := clusterOptions(url)
		if err != nil {
			return nil, err
		}
		copt.PoolSize = poolSize
		return redis.NewClusterClient(copt), nil
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parsing Redis URL: %w", err)
	}
	opt.DialTimeout = 2 * time.Second
	opt.MaxRetries = 1
	opt.PoolSize = poolSize
	return redis.NewClient(opt), nil
}
