#!/usr/bin/env bash
# Measures the "With history (resume)" figures of BENCHMARKS.md: personal
# delivery on 10,000 connections with history off, with history on but plain
# PUBLISH, and through the durable path (FCALL wspubsub_publish_batch,
# resuming clients); the catch-up of 1,000 clients each 100 messages
# behind; Redis memory per held message, and per key for its meta record.
# It starts its own redis-server (on a free port) and gateways on loopback,
# flushes that Redis between runs, and prints one JSON line per run on
# stdout (the human summaries go to stderr). About 2–4 minutes on 2 cores;
# every run is bounded by the load tool's own limits.
#
#   bash scripts/bench-history.sh                  # the figures
#   bash scripts/bench-history.sh > history.jsonl  # keep the JSON lines
#   CONNS=1000 MESSAGES=50000 bash scripts/bench-history.sh  # a smoke run
#   BASELINE=/tmp/old/wspubsub bash scripts/bench-history.sh # also the durable
#       run of an older build (its gateway and load tool), just before the
#       current one's: before and after on the same box in the same run
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-10000}               # connections of the personal runs
MESSAGES=${MESSAGES:-1000000}       # messages of the personal runs
RESUME_CONNS=${RESUME_CONNS:-1000}  # clients of the resume run
BEHIND=${BEHIND:-100}               # messages per key published while they are away
HISTORY_SIZE=${HISTORY_SIZE:-100}   # the gateway's --history-size (≥ BEHIND: no gap)
BASELINE=${BASELINE:-}              # an older wspubsub binary (see above)
mkdir -p bin
go build -o bin/wspubsub ./cmd/wspubsub
WS=bin/wspubsub

. scripts/bench-lib.sh
start_redis
KEYS=$(mktemp)
GPID=""
cleanup() {
  if [ -n "$GPID" ]; then kill "$GPID" 2>/dev/null || true; fi
  kill "$RPID" 2>/dev/null || true
  rm -f "$KEYS"
}
trap cleanup EXIT

gateway() { # gateway [flags]: a fresh gateway on a fresh port, on an emptied Redis
  if [ -n "$GPID" ]; then kill "$GPID" 2>/dev/null || true; wait "$GPID" 2>/dev/null || true; fi
  redis-cli -p "$RPORT" flushall >/dev/null # data only: the gateway (re)loads its functions
  GPORT=$(freeport)
  $WS --listen "127.0.0.1:$GPORT" --redis-url "$REDIS" --channel bench_ch --keys-file "$KEYS" \
    --log-level warn --max-sessions-per-addr 0 "$@" >&2 &
  GPID=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$GPORT/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "gateway not ready" >&2
  exit 1
}
bench() { # bench <label> [flags]: one run; its JSON line, labelled, on stdout
  local label=$1; shift
  echo "== $label" >&2
  local out
  out=$($WS bench --target "http://127.0.0.1:$GPORT" --keys file --keys-file "$KEYS" \
    --redis-url "$REDIS" --channel bench_ch --gateway-pid "$GPID" "$@")
  printf '%s\n' "$out" | sed '$d' >&2 # the summary (not tee /dev/stderr: it would truncate a redirected file)
  printf '%s\n' "$out" | tail -1 | sed "s/^{/{\"label\":\"$label\",/"
}

# 1. History off: the figures without history, for comparison.
gateway --history-size 0
bench history-off --conns "$CONNS" --scenario personal --messages "$MESSAGES"
# 2. History on, plain PUBLISH, clients without since=: what history costs
#    those who do not use it (should be nothing measurable).
gateway --history-size "$HISTORY_SIZE" --history-ttl 5m
bench history-on-plain --conns "$CONNS" --scenario personal --messages "$MESSAGES"
# 3. The durable path: FCALL wspubsub_publish_batch (64 messages per call,
#    pipelined, with idempotency keys), clients connected with since=.
if [ -n "$BASELINE" ]; then
  WS=$BASELINE gateway --history-size "$HISTORY_SIZE" --history-ttl 5m
  WS=$BASELINE bench durable-baseline --conns "$CONNS" --scenario personal --messages "$MESSAGES" --durable
fi
gateway --history-size "$HISTORY_SIZE" --history-ttl 5m
bench durable --conns "$CONNS" --scenario personal --messages "$MESSAGES" --durable
# 4. Resume: clients away while BEHIND messages per key are published.
gateway --history-size "$HISTORY_SIZE" --history-ttl 5m
bench resume --conns "$RESUME_CONNS" --scenario resume --behind "$BEHIND"
# 5. Redis memory per held message: about HISTORY_SIZE messages per key
#    (random keys: the fuller ones trimmed), no idempotency keys, on an
#    empty Redis. (Runs 3 and 4 report it too, idempotency keys included.)
gateway --history-size "$HISTORY_SIZE" --history-ttl 5m
bench memory --conns "$CONNS" --scenario personal --messages $((CONNS * HISTORY_SIZE)) --durable --idempotency-keys=false
# 6. A key's meta record (epoch and last id, kept --history-meta-ttl):
#    MEMORY USAGE of 100 of them, from run 5.
total=0
for i in $(seq 0 99); do
  total=$((total + $(redis-cli -p "$RPORT" memory usage "wspubsub:m:{bench-$i}" samples 0 | sed 's/^$/0/')))
done
echo "== meta-record: $((total / 100)) B per key" >&2
printf '{"label":"meta-record","bytes_per_key":%d}\n' $((total / 100))
