#!/usr/bin/env bash
# Regenerates BENCHMARKS.md's main figures, each with this machine's ceiling
# measured in the same run (`wspubsub bench --calibrate`: one sender
# goroutine writing 60-byte WebSocket frames to CAL_CONNS loopback
# connections, one and 16 frames per write) and its ratio to it. It builds
# the binary, starts its own redis-server (on a free port) and a fresh
# gateway for each run (`--max-sessions-per-addr 0`, keys in a file, as in
# BENCHMARKS.md's set-up), runs the calibration alone, then the personal
# (closed loop, and an open-loop burst), broadcast (by "broadcast":true and
# by a recipients list of every key), rate (20,000/s, and RATE_SHARE of the
# ceiling) and idle scenarios at the main table's sizes, and prints one
# labelled JSON line per run and a markdown table on stdout (the human
# summaries go to stderr). It keeps the JSON lines in
# $OUT_DIR/bench-all.jsonl and plots the rate run's latency over time
# ($OUT_DIR/latency-over-time.png, with tools/plot; PLOT=0 skips it). About
# 5–8 minutes on 2 cores (at most 15); every run is bounded by the load
# tool's own limits and by RUN_TIMEOUT.
#
#   bash scripts/bench-all.sh                 # the figures
#   bash scripts/bench-all.sh > all.txt       # keep the JSON lines and the table
#   CONNS=1000 IDLE_CONNS=1500 MESSAGES=50000 BROADCAST_MESSAGES=100 RATE=2000 \
#     RATE_DURATION=3s IDLE_DURATION=1s CAL_PHASE=500ms bash scripts/bench-all.sh  # a smoke run
#
# Needs go, redis-server, redis-cli, curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-10000}                        # connections of the personal, broadcast, rate and connect-rate runs
IDLE_CONNS=${IDLE_CONNS:-18000}              # connections of the idle-memory run
MESSAGES=${MESSAGES:-2000000}                # personal messages (closed loop: at most 50,000 in flight)
BURST=${BURST:-200000}                       # personal burst: messages published open loop, as fast as Redis takes them
BROADCAST_MESSAGES=${BROADCAST_MESSAGES:-1000}
RATE=${RATE:-20000}                          # messages per second of the rate run
RATE_DURATION=${RATE_DURATION:-20s}
RATE_SHARE=${RATE_SHARE:-0.26}               # the scaled rate run offers this share of the ceiling (20,000/s on issue 9's 77,000/s box)
IDLE_DURATION=${IDLE_DURATION:-5s}
CAL_CONNS=${CAL_CONNS:-$CONNS}               # connections of every run's calibration
CAL_PHASE=${CAL_PHASE:-2s}                   # each calibration phase's sending time
RUN_TIMEOUT=${RUN_TIMEOUT:-300}              # seconds any one run may take
OUT_DIR=${OUT_DIR:-docs/bench}               # where the JSON lines and the plot go
PLOT=${PLOT:-1}
for tool in go redis-server redis-cli curl jq; do
  command -v "$tool" >/dev/null || { echo "bench-all.sh needs $tool" >&2; exit 1; }
done
WS=${WS:-bin/wspubsub}                       # the binary built and measured
mkdir -p "$(dirname "$WS")"
go build -o "$WS" ./cmd/wspubsub

. scripts/bench-lib.sh
start_redis
KEYS=$(mktemp)
LINES=$(mktemp)
GPID=""
cleanup() {
  if [ -n "$GPID" ]; then kill "$GPID" 2>/dev/null || true; fi
  kill "$RPID" 2>/dev/null || true
  rm -f "$KEYS" "$LINES"
}
trap cleanup EXIT

gateway() { # a fresh gateway on a fresh port
  if [ -n "$GPID" ]; then kill "$GPID" 2>/dev/null || true; wait "$GPID" 2>/dev/null || true; fi
  GPORT=$(freeport)
  $WS --listen "127.0.0.1:$GPORT" --redis-url "$REDIS" --channel bench_ch --keys-file "$KEYS" \
    --log-level warn --max-sessions-per-addr 0 >&2 &
  GPID=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$GPORT/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "gateway not ready" >&2
  exit 1
}
bench() { # bench <label> [flags]: one calibrated run on a fresh gateway; its JSON line, labelled, on stdout
  local label=$1; shift
  echo "== $label" >&2
  gateway
  local out
  out=$(timeout "$RUN_TIMEOUT" $WS bench --target "http://127.0.0.1:$GPORT" --keys file --keys-file "$KEYS" \
    --redis-url "$REDIS" --channel bench_ch --gateway-pid "$GPID" \
    --calibrate --calibrate-conns "$CAL_CONNS" --calibrate-phase "$CAL_PHASE" "$@")
  printf '%s\n' "$out" | sed '$d' >&2 # the summary (not tee /dev/stderr: it would truncate a redirected file)
  printf '%s\n' "$out" | tail -1 | sed "s/^{/{\"label\":\"$label\",/" | tee -a "$LINES"
}

echo "== ceiling" >&2
out=$(timeout "$RUN_TIMEOUT" $WS bench --scenario ceiling --conns "$CAL_CONNS" --calibrate-phase "$CAL_PHASE")
printf '%s\n' "$out" | sed '$d' >&2
printf '%s\n' "$out" | tail -1 | sed 's/^{/{"label":"ceiling",/' | tee -a "$LINES"
bench personal --conns "$CONNS" --scenario personal --messages "$MESSAGES"
bench personal-burst --conns "$CONNS" --scenario personal --messages "$BURST" --window 0
bench broadcast --conns "$CONNS" --scenario broadcast --messages "$BROADCAST_MESSAGES"
bench broadcast-list --conns "$CONNS" --scenario broadcast --messages "$BROADCAST_MESSAGES" --broadcast-list
bench rate --conns "$CONNS" --scenario rate --rate "$RATE" --duration "$RATE_DURATION"
# The same offered load relative to this machine: RATE_SHARE of the ceiling
# measured at the start.
SCALED=$(jq -r --argjson share "$RATE_SHARE" 'select(.label == "ceiling") | .ceiling.one_per_write_per_s * $share | floor' "$LINES")
bench rate-scaled --conns "$CONNS" --scenario rate --rate "$SCALED" --duration "$RATE_DURATION"
bench idle-memory --conns "$IDLE_CONNS" --scenario idle --duration "$IDLE_DURATION"
bench idle-connect --conns "$CONNS" --scenario idle --duration "$IDLE_DURATION"

# The table: one row per run, its figure, its ratio to the ceiling measured
# in the same run, the date and that ceiling.
DATE=$(date -u +%F)
echo
echo "| run | figure | ratio to ceiling | frames per write | date | calibration (same run) |"
echo "| --- | --- | --- | --- | --- | --- |"
jq -r --arg date "$DATE" '
  def n: floor | tostring;
  def r: if . == null then "—" else (. * 100 | round / 100 | tostring) + "×" end;
  (.ceiling // {}) as $c
  | (if .label == "ceiling" then "\($c.one_per_write_per_s | n) frames/s at one per write, \($c.sixteen_per_write_per_s | n)/s at 16 per write"
     elif .scenario == "personal" then "\(.delivered_per_s | n) msg/s, \(.lost) lost (\(.published) messages, \(.conns) conns)"
     elif .scenario == "broadcast" and (.label | test("list")) then "\(.delivered_per_s | n) deliveries/s by a recipients list of every key, \(.lost) lost (\(.conns) conns)"
     elif .scenario == "broadcast" then "\(.delivered_per_s | n) deliveries/s, \(.lost) lost (\(.conns) conns)"
     elif .scenario == "rate" then "\(.published / .publish_s | n) msg/s offered: p99 \(.latency.p99_ms) ms (p50 \(.latency.p50_ms), p99.9 \(.latency.p999_ms)), \(.delivered_per_s | n) msg/s delivered, \(.lost) lost"
     elif .label == "idle-memory" then "\(.gateway_bytes_per_conn // 0 | n) bytes per idle connection (\(.connected) conns)" + (if .gateway_bytes_per_conn_marginal then ", \(.gateway_bytes_per_conn_marginal | n) each beyond the first \(.warm_conns)" else "" end)
     else "\(.connects_per_s | n) connects/s (\(.connected) conns)" end) as $figure
  | (if .label == "ceiling" then "1× (the ceiling)"
     elif .scenario == "rate" then (.ratio_to_ceiling | r) + " offered" elif .scenario == "idle" then "—" else (.ratio_to_ceiling | r) end) as $ratio
  | (if .frames_per_write then (.frames_per_write * 100 | round / 100 | tostring) else "—" end) as $fpw
  | "| \(.label) | \($figure) | \($ratio) | \($fpw) | \($date) | \($c.one_per_write_per_s | n)/s one per write, \($c.sixteen_per_write_per_s | n)/s 16 per write, \($c.conns) conns |"
' "$LINES"

mkdir -p "$OUT_DIR"
cp "$LINES" "$OUT_DIR/bench-all.jsonl"
if [ "$PLOT" = 1 ]; then
  jq -c 'select(.label == "rate")' "$LINES" > "$OUT_DIR/rate-timeline.jsonl"
  OUT_ABS=$(cd "$OUT_DIR" && pwd)
  (cd tools/plot && go run . -timeline "$OUT_ABS/rate-timeline.jsonl" -out "$OUT_ABS") >&2
fi
