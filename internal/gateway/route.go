package gateway

import (
	"context"
	"errors"
	"log/slog"

	"github.com/wspubsub/wspubsub/internal/broker"
	"github.com/wspubsub/wspubsub/internal/envelope"
)

// publishLive publishes a validated message without history: on the
// inbound channel, or, with per-key routing, on each recipient's channel.
func (g *Gateway) publishLive(ctx context.Context, msg []byte) error {
	if g.router == nil {
		return g.broker.Publish(ctx, g.cfg.Channel, msg)
	}
	routed, err := g.routed(msg)
	if err != nil {
		return err
	}
	return g.router.Deliver(ctx, routed)
}

// routed splits msg into what per-key routing publishes: one message per
// recipient (listed once) on its channel, or the broadcast as it is.
func (g *Gateway) routed(msg []byte) ([]broker.Routed, error) {
	g.pub.mu.Lock()
	defer g.pub.mu.Unlock()
	env, err := g.pub.p.Parse(msg)
	if err != nil {
		return nil, err
	}
	if env.Broadcast {
		return []broker.Routed{{Broadcast: true, Payload: msg}}, nil
	}
	out := make([]broker.Routed, 0, len(env.Recipients))
	seen := make(map[string]bool, len(env.Recipients))
	for _, k := range env.Recipients {
		if seen[string(k)] {
			continue
		}
		seen[string(k)] = true
		out = append(out, broker.Routed{Key: string(k), Payload: envelope.ForKey(env.Payload, k)})
	}
	return out, nil
}

// forward routes one plain PUBLISH received on the inbound channel while
// this node holds the forwarding lease (--routing keys): recorded in the
// recipients' histories when history is on (so it becomes resumable from
// then on), else published live on their channels. A message the parser
// refuses is dropped and counted as the hub would have; a "wspubsub_ids"
// member is not forwarded (neither path keeps it) and is counted as the hub
// counts it on the plain channel without routing.
func (g *Gateway) forward(ctx context.Context, msg []byte) {
	g.pub.mu.Lock()
	env, err := g.pub.p.Parse(msg)
	g.pub.mu.Unlock()
	if err == nil && env.StrippedIDs {
		g.metrics.Stripped.WithLabelValues(envelope.ReasonUntrustedIDs).Inc()
		g.sampled.Log(slog.LevelWarn, `a plain message carried "wspubsub_ids": removed before forwarding (only the history functions write ids)`,
			"reason", envelope.ReasonUntrustedIDs, "bytes", len(msg))
	}
	switch {
	case err != nil:
	case g.history != nil:
		_, err = g.history.Record(ctx, msg, "")
	default:
		err = g.publishLive(ctx, msg)
	}
	if err == nil {
		g.metrics.Forwarded.Inc()
		return
	}
	reason := "forward_failed"
	var e *envelope.Error
	if errors.As(err, &e) {
		reason = e.Reason
	}
	g.metrics.Drops.WithLabelValues(reason).Inc()
	g.sampled.Log(slog.LevelWarn, "inbound message dropped", "reason", reason, "err", err, "bytes", len(msg))
}
