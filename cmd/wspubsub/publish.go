package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/envelope"
)

// publish sends one message, through Redis when --redis-url is given,
// otherwise to a running gateway's POST /publish. It validates the message
// first so a typo is reported here, not dropped by the gateway.
func publish(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	cfg, err := config.ParsePublish(args, os.Getenv, stdout) // --help
	if err != nil {
		return err
	}
	msg := []byte(cfg.Message)
	if cfg.Message == "-" {
		if msg, err = io.ReadAll(stdin); err != nil {
			return fmt.Errorf("reading message from stdin: %w", err)
		}
	}
	if msg, err = buildEnvelope(cfg, bytes.TrimSpace(msg)); err != nil {
		return err
	}
	var p envelope.Parser
	if _, err := p.Parse(msg); err != nil {
		return fmt.Errorf("not a valid message: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	if cfg.RedisURL != "" {
		// go-redis's own lines (a Redis that refuses) on stderr as log
		// lines, once per message per 10 s, rather than its raw ones.
		broker.RouteClientLogs(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		return publishRedis(ctx, cfg, msg, stdout)
	}
	return publishHTTP(ctx, cfg, msg, stdout)
}

// publishRedis records the message in history and publishes it in one
// FCALL (the functions every gateway with history loads), or PUBLISHes it
// with --plain, or when no gateway with history has set up this Redis.
func publishRedis(ctx context.Context, cfg config.Publish, msg []byte, stdout io.Writer) error {
	opt, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return fmt.Errorf("parsing --redis-url: %w", broker.URLProblem(cfg.RedisURL, err))
	}
	c := redis.NewClient(opt)
	defer c.Close()
	if !cfg.Plain {
		v, err := c.FCall(ctx, "wspubsub_publish", nil, msg, cfg.IdempotencyKey).Slice()
		switch {
		case err == nil:
			printRecorded(stdout, "recorded in history and published on "+cfg.Channel, len(v) > 0 && v[0] == int64(1), v[min(1, len(v)):])
			return nil
		case !strings.Contains(err.Error(), "Function not found"):
			return fmt.Errorf("recording on Redis (FCALL wspubsub_publish): %w", err)
		}
		fmt.Fprintln(stdout, "note: this Redis has no wspubsub functions (no gateway with history has used it): publishing without history")
	}
	n, err := c.Publish(ctx, cfg.Channel, msg).Result()
	if err != nil {
		return fmt.Errorf("publishing on Redis channel %q: %w", cfg.Channel, err)
	}
	fmt.Fprintf(stdout, "published on %s (%d gateway subscriber(s))\n", cfg.Channel, n)
	return nil
}

// publishHTTP POSTs the message to a running gateway's /publish.
func publishHTTP(ctx context.Context, cfg config.Publish, msg []byte, stdout io.Writer) error {
	url := strings.TrimSuffix(cfg.Gateway, "/") + "/publish"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(msg))
	if err != nil {
		return fmt.Errorf("building request to %s: %w", url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+cfg.Token)
	}
	if cfg.IdempotencyKey != "" {
		req.Header.Set("Idempotency-Key", cfg.IdempotencyKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("posting to %s (is the gateway running?): %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("gateway answered %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	var ans struct {
		Status string `json:"status"`
		IDs    []any  `json:"ids"`
	}
	_ = json.Unmarshal(body, &ans)
	if ans.IDs == nil {
		fmt.Fprintf(stdout, "published via %s\n", url)
		return nil
	}
	printRecorded(stdout, "recorded in history and published via "+url, ans.Status == "duplicate", ans.IDs)
	return nil
}

func printRecorded(out io.Writer, what string, duplicate bool, ids []any) {
	if duplicate {
		what = "already published with this --idempotency-key: not delivered again"
	}
	fmt.Fprintf(out, "%s (ids %v)\n", what, ids)
}

// buildEnvelope wraps data for --to / --broadcast; otherwise msg is the
// whole envelope already.
func buildEnvelope(cfg config.Publish, msg []byte) ([]byte, error) {
	if len(cfg.To) == 0 && !cfg.Broadcast {
		return msg, nil
	}
	if !json.Valid(msg) {
		return nil, fmt.Errorf("the data is not valid JSON: %s", msg)
	}
	env := map[string]any{"data": json.RawMessage(msg)}
	if cfg.Broadcast {
		env["broadcast"] = true
	} else {
		env["recipients"] = cfg.To
	}
	return json.Marshal(env)
}
