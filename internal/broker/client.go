package broker

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// NewClient returns a Redis client on --redis-url: a single server's URL,
// or with cluster the seeds of a Redis Cluster. The broker makes its own;
// another part of the gateway (presence) makes one with a pool of its own,
// so that its commands never wait behind the broker's (poolSize 0: the
// default size).
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
