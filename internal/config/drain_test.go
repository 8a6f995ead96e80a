package config

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestDrainPeriod(t *testing.T) {
	c, err := ParseServe(nil, env(nil), io.Discard)
	if err != nil || c.DrainPeriod != 5*time.Second {
		t.Fatalf("default drain period %v (%v), want 5s", c.DrainPeriod, err)
	}
	c, err = ParseServe(nil, env(map[string]string{"WSPUBSUB_DRAIN_PERIOD": "0"}), io.Discard)
	if err != nil || c.DrainPeriod != 0 {
		t.Fatalf("WSPUBSUB_DRAIN_PERIOD=0: %v (%v)", c.DrainPeriod, err)
	}
	if _, err := ParseServe([]string{"--drain-period", "-1s"}, env(nil), io.Discard); err == nil || !strings.Contains(err.Error(), "--drain-period") {
		t.Fatalf("negative drain period: %v", err)
	}
}
