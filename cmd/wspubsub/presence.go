package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/wspubsub/wspubsub/internal/config"
	"github.com/wspubsub/wspubsub/internal/gateway"
	"github.com/wspubsub/wspubsub/internal/presence"
)

// presenceCmd asks a running gateway where keys are connected (POST
// /presence, in batches of the gateway's limit) and prints a table, or
// the answer's JSON with --json.
func presenceCmd(args []string, stdout, stderr io.Writer) error {
	cfg, err := config.ParsePresence(args, os.Getenv, stdout) // --help
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	var all struct {
		Keys map[string]json.RawMessage `json:"keys"`
	}
	all.Keys = map[string]json.RawMessage{}
	for batch := range slices.Chunk(cfg.Keys, gateway.MaxPresenceKeys) {
		body, _ := json.Marshal(batch)
		var ans struct {
			Keys map[string]json.RawMessage `json:"keys"`
		}
		if err := ask(ctx, cfg, http.MethodPost, "/presence", body, &ans); err != nil {
			return err
		}
		for k, v := range ans.Keys {
			all.Keys[k] = v
		}
	}
	if cfg.JSON {
		return printJSON(stdout, all)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tONLINE\tCONNS\tNODE\tNODE CONNS\tTRANSPORTS")
	for _, k := range cfg.Keys {
		var kp struct {
			Online bool             `json:"online"`
			Conns  int              `json:"conns"`
			Nodes  []presence.Entry `json:"nodes"`
		}
		_ = json.Unmarshal(all.Keys[k], &kp)
		if len(kp.Nodes) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t%d\t-\t-\t-\n", k, yesNo(kp.Online), kp.Conns)
		}
		for i, e := range kp.Nodes {
			key, online, conns := k, yesNo(kp.Online), fmt.Sprint(kp.Conns)
			if i > 0 {
				key, online, conns = "", "", ""
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", key, online, conns, e.Node, e.Conns, strings.Join(e.Transports, ","))
		}
	}
	return tw.Flush()
}

// nodesCmd lists the live gateway nodes (GET /nodes).
func nodesCmd(args []string, stdout, stderr io.Writer) error {
	cfg, err := config.ParseNodes(args, os.Getenv, stdout) // --help
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	var ans struct {
		Nodes []presence.Node `json:"nodes"`
	}
	if err := ask(ctx, cfg, http.MethodGet, "/nodes", nil, &ans); err != nil {
		return err
	}
	if cfg.JSON {
		return printJSON(stdout, ans)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDRESS\tCONNS\tVERSION\tSTARTED\tLAST HEARTBEAT")
	for _, n := range ans.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", n.ID, n.Addr, n.Conns, n.Version,
			n.Started.Local().Format(time.DateTime), n.Heartbeat.Local().Format(time.TimeOnly))
	}
	return tw.Flush()
}

// ask sends one request to the gateway, with the token if given, and
// decodes a 200's JSON into out.
func ask(ctx context.Context, cfg config.Query, method, path string, body []byte, out any) error {
	url := strings.TrimSuffix(cfg.Gateway, "/") + path
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building request to %s: %w", url, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+cfg.Token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("asking %s (is the gateway running?): %w", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the answer of %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("gateway answered %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decoding the answer of %s: %w", url, err)
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
