// Command wspubsub is a real-time push gateway: backends publish JSON on a
// Redis channel and wspubsub delivers it to every live WebSocket connection
// of the recipients.
//
//	wspubsub [serve] [flags]      run the gateway (the default)
//	wspubsub publish [flags] MSG  publish a message
//	wspubsub bench [flags]        load-test a gateway
//	wspubsub presence [flags] KEY where keys are connected (nodes, connections)
//	wspubsub nodes [flags]        the live gateway nodes
//	wspubsub keys add|rm|ls ...   edit the client keys in MongoDB or a key file
//	wspubsub config [flags]       the effective serve configuration
//	wspubsub version              the version, VCS revision and Go version
//
// Run a sub-command with --help for its flags; every flag has a WSPUBSUB_*
// environment twin. Exit status: 0 success, 1 failure at run time, 2 usage
// error (a *config.UsageError).
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

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/wspubsub/wspubsub/internal/auth"
	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/gateway"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := "serve" // flags without a sub-command run the gateway, as the original did
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help":
			cmd, args = "help", nil
		case "-version", "--version":
			cmd, args = "version", nil
		default:
			if len(args[0]) > 0 && args[0][0] != '-' {
				cmd, args = args[0], args[1:]
			}
		}
	}
	var err error
	switch cmd {
	case "serve":
		err = serve(args, stdout, stderr)
	case "publish":
		err = publish(args, stdin, stdout, stderr)
	case "bench":
		err = benchCmd(args, stdout, stderr)
	case "presence":
		err = presenceCmd(args, stdout, stderr)
	case "nodes":
		err = nodesCmd(args, stdout, stderr)
	case "keys":
		err = keysCmd(args, stdout, stderr)
	case "config":
		err = configCmd(args, stdout, stderr)
	case "version":
		if len(args) > 0 {
			err = &config.UsageError{Err: errors.New("version takes no arguments")}
			break
		}
		printVersion(stdout)
	case "help":
		if len(args) > 0 && args[0] != "help" { // wspubsub help keys: keys --help
			return run([]string{args[0], "--help"}, stdin, stdout, stderr)
		}
		printOverview(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "wspubsub: unknown command %q\nRun 'wspubsub --help' for the commands (%s).\n", cmd, commandNames())
		return 2
	}
	return exitStatus(cmd, err, stderr)
}

// exitStatus prints err and maps it to the exit status: 0 for success and
// --help, 2 for a usage error (a *config.UsageError anywhere in the chain),
// 1 for a failure at run time.
func exitStatus(cmd string, err error, stderr io.Writer) int {
	var usage *config.UsageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "wspubsub %s: %v\nRun 'wspubsub %s --help' for usage.\n", cmd, err, cmd)
		return 2
	default:
		fmt.Fprintln(stderr, "wspubsub:", err)
		return 1
	}
}

func serve(args []string, stdout, stderr io.Writer) error {
	cfg, err := config.ParseServe(args, os.Getenv, stdout) // stdout: only --help writes there
	if err != nil {
		return err
	}
	if err := checkKeyMaterial(cfg); err != nil {
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
	ctx, stop := onSignals(log, g)
	defer stop()
	go manageMemory(ctx, log, cfg.GCPercent, func() float64 { return counterValue(g.Metrics().Deliveries) })
	return g.Run(ctx)
}

// onSignals returns a context that the first SIGTERM or SIGINT ends (the
// gateway drains, then shuts down); a second one skips the rest of the
// drain. stop releases the signals.
func onSignals(log *slog.Logger, g *gateway.Gateway) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			log.Info("signal received: stopping (a second one skips the drain)", "signal", sig.String())
			cancel()
		case <-done:
			return
		}
		select {
		case sig := <-sigs:
			log.Warn("second signal: closing every connection at once", "signal", sig.String())
			g.SkipDrain()
		case <-done:
		}
	}()
	return ctx, func() { signal.Stop(sigs); close(done); cancel() }
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

// checkKeyMaterial reads --jwt-key as the gateway will (a file, a PEM
// public key or a long enough secret): a bad one is a usage error, found by
// `wspubsub config` as well as by serve, before anything starts.
func checkKeyMaterial(cfg config.Serve) error {
	if cfg.JWTKey == "" {
		return nil
	}
	if _, _, err := auth.ParseKey(cfg.JWTKey); err != nil {
		return &config.UsageError{Err: err}
	}
	return nil
}

// counterValue reads a Prometheus counter's value.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if c.Write(&m) != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}
