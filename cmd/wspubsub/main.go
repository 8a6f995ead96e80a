// Command wspubsub is a real-time push gateway: backends publish JSON on a
// Redis channel and wspubsub delivers it to every live WebSocket connection
// of the recipients.
//
//	wspubsub [serve] [flags]      run the gateway (the default)
//	wspubsub publish [flags] MSG  publish a message
//	wspubsub bench [flags]        load-test a gateway
//
// Run a sub-command with --help for its flags; every flag has a WSPUBSUB_*
// environment twin.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/gateway"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(args, stderr)
	case "publish":
		err = publish(args, stdin, stdout, stderr)
	case "bench":
		err = benchCmd(args, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, "usage: wspubsub [serve|publish] [flags]\n\n  serve    run the gateway (default)\n  publish  publish a message\n  bench    load-test a gateway (connections, delivery rate, latency, memory)\n\nRun 'wspubsub <command> --help' for flags.\n")
		return 0
	default:
		fmt.Fprintf(stderr, "wspubsub: unknown command %q (want serve, publish or bench)\n", cmd)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	default:
		fmt.Fprintln(stderr, "wspubsub:", err)
		return 1
	}
}

func serve(args []string, stderr io.Writer) error {
	cfg, err := config.ParseServe(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	if cfg.GCPercent != 100 {
		debug.SetGCPercent(cfg.GCPercent)
	}
	g, err := gateway.New(cfg, gateway.Options{Logger: log})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go trimWhenQuiet(ctx, log)
	return g.Run(ctx)
}

func newLogger(cfg config.Serve, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
