package broker

import (
	"errors"
	"fmt"
	neturl "net/url"
	"strings"
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
		return nil, fmt.Errorf("parsing Redis URL: %w", URLProblem(url, err))
	}
	opt.DialTimeout = 2 * time.Second
	opt.MaxRetries = 1
	opt.PoolSize = poolSize
	return redis.NewClient(opt), nil
}

// URLProblem is a Redis URL's parse error without the URL's credentials:
// url.Parse's error quotes the whole URL, and the part it balks at is
// often the password (a '/', '#' or '%' in it).
func URLProblem(raw string, err error) error {
	var ue *neturl.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s is not a valid URL (a password holding '/', '#', '?', '@' or '%%' must be percent-encoded)", redactURL(raw))
	}
	return errors.New(strings.ReplaceAll(err.Error(), raw, redactURL(raw)))
}

// redactURL masks what stands between "scheme://" and the last '@' (the
// user and password), whether or not the URL parses.
func redactURL(raw string) string {
	i := strings.Index(raw, "://")
	if i < 0 {
		return raw
	}
	at := strings.LastIndex(raw[i+3:], "@")
	if at < 0 {
		return raw
	}
	return raw[:i+3] + "xxxxx" + raw[i+3+at:]
}
