// Command mongowire runs an embedded FerretDB (SQLite backend) so that
// wspubsub's integration tests talk to a real MongoDB-wire server.
//
// It lives in its own Go module so FerretDB's dependencies stay out of the
// gateway's go.mod. It is a test tool: it listens on loopback only.
//
//	mongowire -listen 127.0.0.1:27017 -dir /tmp/ferret
//
// It prints "ready <uri>" on stdout once it accepts connections and stops on
// SIGINT or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "loopback address to listen on")
	dir := flag.String("dir", "", "directory for the SQLite files (required)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "mongowire: -dir is required")
		os.Exit(2)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "mongowire: creating data dir:", err)
		os.Exit(1)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen},
		Logger:    logger,
		Handler:   "sqlite",
		SQLiteURL: "file:" + *dir + "/",
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "mongowire: starting FerretDB:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()

	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", *listen, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "mongowire: not listening after 30s:", err)
			os.Exit(1)
		}
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Printf("ready mongodb://%s/\n", *listen)
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, "mongowire:", err)
		os.Exit(1)
	}
}
