package config

import (
	"io"
	"strings"
	"testing"
	"time"
)

// --history-meta-ttl: 24h by default, never below --history-ttl while
// history is on (the meta record must outlive the messages it judges).
func TestHistoryMetaTTL(t *testing.T) {
	c, err := ParseServe(nil, env(nil), io.Discard)
	if err != nil || c.HistoryMetaTTL != 24*time.Hour {
		t.Fatalf("default: %v %v", c.HistoryMetaTTL, err)
	}
	c, err = ParseServe(nil, env(map[string]string{"WSPUBSUB_HISTORY_META_TTL": "48h"}), io.Discard)
	if err != nil || c.HistoryMetaTTL != 48*time.Hour {
		t.Fatalf("env twin: %v %v", c.HistoryMetaTTL, err)
	}
	if _, err := ParseServe([]string{"--history-ttl", "10m", "--history-meta-ttl", "5m"}, env(nil), io.Discard); err == nil ||
		!strings.Contains(err.Error(), "--history-meta-ttl must be at least --history-ttl") {
		t.Fatalf("meta TTL below the TTL: %v", err)
	}
	if _, err := ParseServe([]string{"--history-size", "0", "--history-meta-ttl", "1s"}, env(nil), io.Discard); err != nil {
		t.Fatalf("history off: %v", err)
	}
}
