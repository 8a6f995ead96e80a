package broker

import (
	"strings"
	"testing"
)

// A --redis-url whose password url.Parse cannot read (a '/', '#' or bare
// '%' in it: common in generated passwords) stopped the start with the
// parse error, which quotes the whole URL, password included, to stderr
// (the service's journal).
func TestRedisURLErrorsHideThePassword(t *testing.T) {
	for _, u := range []string{
		"redis://:ab/cdpw0rd@127.0.0.1:6379",
		"redis://user:p%zzpw0rd@127.0.0.1:6379",
		"redis://user:pw0rd@127.0.0.1:6379/notanumber",
	} {
		for _, cluster := range []bool{false, true} {
			_, err := NewClient(u, cluster, 0)
			if err == nil {
				t.Fatalf("%s (cluster %v): no error", u, cluster)
			}
			if strings.Contains(err.Error(), "pw0rd") {
				t.Fatalf("%s (cluster %v): error shows the password: %v", u, cluster, err)
			}
			if strings.Contains(err.Error(), "not a valid URL") && !strings.Contains(err.Error(), "127.0.0.1") {
				t.Fatalf("%s (cluster %v): error does not say which URL: %v", u, cluster, err)
			}
		}
	}
}
