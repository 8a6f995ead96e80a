#!/usr/bin/env bash
# Measures the figures plotted in BENCHMARKS.md and renders the plots:
# latency percentiles against publish rate (10,000 connections) and gateway
# memory against idle connections. It starts its own redis-server and
# gateways on loopback and stops them. About three minutes on 2 cores.
#
#   bash scripts/bench-plots.sh            # writes docs/bench/*.jsonl and *.png
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=docs/bench
mkdir -p "$OUT" bin
go build -o bin/wspubsub ./cmd/wspubsub
WS=bin/wspubsub
RPORT=$((20000 + RANDOM % 10000))
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --loglevel warning &
RPID=$!
KEYS=$(mktemp)
GPID=""
cleanup() { [ -n "$GPID" ] && kill "$GPID" 2>/dev/null; kill "$RPID" 2>/dev/null; rm -f "$KEYS"; }
trap cleanup EXIT
sleep 0.5

gateway() { # gateway <port> [flags]: start a fresh gateway
  [ -n "$GPID" ] && kill "$GPID" 2>/dev/null && wait "$GPID" 2>/dev/null || true
  local port=$1; shift
  $WS --listen "127.0.0.1:$port" --redis-url "redis://127.0.0.1:$RPORT" --keys-file "$KEYS" --log-level warn "$@" &
  GPID=$!
  sleep 0.5
}
bench() { $WS bench --target "http://127.0.0.1:$GPORT" --keys file --keys-file "$KEYS" \
  --redis-url "redis://127.0.0.1:$RPORT" --gateway-pid "$GPID" "$@" | tee /dev/stderr | tail -1; }

GPORT=$((30000 + RANDOM % 10000))
: > "$OUT/rate.jsonl"
gateway "$GPORT"
for rate in 5000 10000 20000 40000 80000; do
  bench --conns 10000 --scenario rate --rate "$rate" --duration 10s >> "$OUT/rate.jsonl"
done

: > "$OUT/idle.jsonl"
for n in 2000 6000 10000 14000 18000; do
  gateway "$GPORT"
  bench --conns "$n" --scenario idle --duration 5s >> "$OUT/idle.jsonl"
done

(cd tools/plot && go run . -rate "../../$OUT/rate.jsonl" -idle "../../$OUT/idle.jsonl" -out "../../$OUT")
