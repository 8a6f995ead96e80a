package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/wspubsub/wspubsub/internal/config"
)

func TestExitStatus(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{flag.ErrHelp, 0},
		{fmt.Errorf("parsing: %w", &config.UsageError{Err: errors.New("bad flag")}), 2},
		{errors.New("cannot reach Redis"), 1},
	} {
		var out strings.Builder
		if got := exitStatus("keys", c.err, &out); got != c.want {
			t.Errorf("%v: exit %d, want %d", c.err, got, c.want)
		}
		if c.want == 2 && !strings.Contains(out.String(), "Run 'wspubsub keys --help' for usage.") {
			t.Errorf("usage error without the pointer: %q", out.String())
		}
	}
}

func TestRunDispatch(t *testing.T) {
	var out, errOut strings.Builder
	if got := run([]string{"--help"}, nil, &out, io.Discard); got != 0 {
		t.Fatalf("--help: exit %d", got)
	}
	for _, c := range commands() {
		if !strings.Contains(out.String(), "\n  "+c.name+" ") {
			t.Errorf("overview lacks %s", c.name)
		}
	}
	if got := run([]string{"nope"}, nil, io.Discard, &errOut); got != 2 || !strings.Contains(errOut.String(), "wspubsub --help") {
		t.Errorf("unknown command: exit %d, %q", got, errOut.String())
	}
	out.Reset()
	if got := run([]string{"--version"}, nil, &out, io.Discard); got != 0 || !strings.Contains(out.String(), "go:") {
		t.Errorf("--version: exit %d, %q", got, out.String())
	}
	if got := run([]string{"keys", "ls"}, nil, io.Discard, io.Discard); got != 2 {
		t.Errorf("keys without a store: exit %d, want 2", got)
	}
}
