package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/envelope"
)

// publish sends one message, through Redis when --redis-url is given,
// otherwise to a running gateway's POST /publish. It validates the message
// first so a typo is reported here, not dropped by the gateway.
func publish(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	cfg, err := config.ParsePublish(args, os.Getenv, stderr)
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
		opt, err := redis.ParseURL(cfg.RedisURL)
		if err != nil {
			return fmt.Errorf("parsing --redis-url: %w", err)
		}
		c := redis.NewClient(opt)
		defer c.Close()
		n, err := c.Publish(ctx, cfg.Channel, msg).Result()
		if err != nil {
			return fmt.Errorf("publishing on Redis channel %q: %w", cfg.Channel, err)
		}
		fmt.Fprintf(stdout, "published on %s (%d gateway subscriber(s))\n", cfg.Channel, n)
		return nil
	}
	url := strings.TrimSuffix(cfg.Gateway, "/") + "/publish"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(msg))
	if err != nil {
		return fmt.Errorf("building request to %s: %w", url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+cfg.Token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("posting to %s (is the gateway running?): %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("gateway answered %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	fmt.Fprintf(stdout, "published via %s\n", url)
	return nil
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
