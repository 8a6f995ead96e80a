package config

import (
	"errors"
	"fmt"
	"io"
	"time"
)

// Query holds the settings of the presence and nodes sub-commands, which
// ask a running gateway.
type Query struct {
	Gateway string
	Token   string
	JSON    bool // print the gateway's JSON answer as it is
	Timeout time.Duration
	Keys    []string // presence only
}

// ParsePresence parses `wspubsub presence [flags] KEY [KEY...]`.
func ParsePresence(args []string, getenv func(string) string, out io.Writer) (Query, error) {
	c, f := queryFlags("wspubsub presence", out)
	f.Usage = func() {
		fmt.Fprintf(f.Output(), "Usage: wspubsub presence [flags] KEY [KEY...]\n\nWhere each key is connected: nodes, connections, transports (GET /presence).\n\n")
		f.PrintDefaults()
	}
	if err := f.parse(args, getenv); err != nil {
		return *c, err
	}
	if f.NArg() == 0 {
		return *c, &UsageError{Err: errors.New("presence takes one or more keys")}
	}
	c.Keys = f.Args()
	return *c, nil
}

// ParseNodes parses `wspubsub nodes [flags]`.
func ParseNodes(args []string, getenv func(string) string, out io.Writer) (Query, error) {
	c, f := queryFlags("wspubsub nodes", out)
	f.Usage = func() {
		fmt.Fprintf(f.Output(), "Usage: wspubsub nodes [flags]\n\nThe live gateway nodes (GET /nodes).\n\n")
		f.PrintDefaults()
	}
	if err := f.parse(args, getenv); err != nil {
		return *c, err
	}
	if f.NArg() > 0 {
		return *c, &UsageError{Err: errors.New("nodes takes no arguments")}
	}
	return *c, nil
}

func queryFlags(name string, out io.Writer) (*Query, *flagSet) {
	c := &Query{}
	f := newFlagSet(name, out)
	f.str(&c.Gateway, "gateway", "http://127.0.0.1:8088", "running gateway to ask")
	f.str(&c.Token, "publish-token", "", "the gateway's --publish-token (needed unless it runs on this machine without one)")
	f.boolean(&c.JSON, "json", false, "print the gateway's JSON answer instead of a table")
	f.dur(&c.Timeout, "timeout", 5*time.Second, "give up after this long")
	return c, f
}
