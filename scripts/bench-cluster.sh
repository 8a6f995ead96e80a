#!/usr/bin/env bash
# BENCHMARKS.md's "Over 6 nodes on a Redis Cluster" figures (issue 10):
# CONNS connections (100,000) spread over NODES gateways (6: ≈ 16,700 each,
# under the 20,000 open files a process may hold here) on a SHARDS-master
# Redis Cluster (3), everything on this machine. It builds the binary,
# starts the cluster (redis-server --cluster-enabled yes on free ports,
# redis-cli --cluster create), and for each run a fresh set of gateways
# (--routing keys --redis-cluster, one --node-id each, keys in a file), and
# runs `wspubsub bench` in its multi-target mode: connection i goes to
# gateway i mod NODES, from client processes of PER_PROC connections on
# 127.0.0.1, 127.0.0.2, …; the tool publishes as a routed backend does
# (SPUBLISH on each key's channel, broadcasts on the broadcast channel,
# durable FCALL per slot) and reports each node's RSS and CPU, each Redis
# server's CPU (/proc) and commands (INFO), delivered, lost and latency.
#
# Runs: the ceiling alone, then idle (memory per connection), personal
# (closed loop), personal burst (open loop), broadcast, rate (p99), durable
# personal (FCALL per slot, resuming clients) and, unless PLAIN_MESSAGES=0,
# plain PUBLISH on the inbound channel (forwarded by the one node holding
# the lease: what that path costs). Every run but the ceiling is calibrated
# (--calibrate, CAL_CONNS loopback connections) before its clients connect.
# It prints one labelled JSON line per run and a markdown table on stdout
# (summaries on stderr), keeps the lines in $OUT_DIR/cluster.jsonl and plots
# each node's and shard's CPU and each node's memory with tools/plot
# (PLOT=0 skips it). History is on (the gateway's default, 100 per key):
# live messages bypass it, and the durable run needs it. Client processes
# open BATCH connections at once each (25, not the tool's 200): with 7
# processes × 200 handshakes in flight on 2 cores, a gateway's SSUBSCRIBE
# and history read for a new key waited past --key-check-timeout (2 s)
# and ~50 % of resuming clients were refused with 1013; at 25 none is, and
# the connect rate is higher. RUNS picks runs (e.g. RUNS="ceiling idle").
#
#   bash scripts/bench-cluster.sh                # the figures (≈ 10 minutes)
#   CONNS=6000 PER_PROC=2500 MESSAGES=100000 BURST=30000 BROADCAST_MESSAGES=20 RATE=2000 RATE_DURATION=3s \
#     DURABLE_MESSAGES=20000 PLAIN_MESSAGES=5000 IDLE_DURATION=2s CAL_CONNS=2000 CAL_PHASE=500ms \
#     OUT_DIR=/tmp/bc bash scripts/bench-cluster.sh   # a smoke run
#
# Needs go, redis-server and redis-cli (7.0 or later), curl and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-100000}                 # connections of every run, spread over the gateways
NODES=${NODES:-6}                      # gateways
SHARDS=${SHARDS:-3}                    # Redis Cluster masters
PER_PROC=${PER_PROC:-15000}            # connections per client process (one source address each)
MESSAGES=${MESSAGES:-2000000}          # personal, closed loop (at most 50,000 in flight)
BURST=${BURST:-300000}                 # personal burst, open loop
BROADCAST_MESSAGES=${BROADCAST_MESSAGES:-200}
RATE=${RATE:-20000}                    # messages per second of the rate run
RATE_DURATION=${RATE_DURATION:-20s}
DURABLE_MESSAGES=${DURABLE_MESSAGES:-300000}
PLAIN_MESSAGES=${PLAIN_MESSAGES:-30000}   # plain PUBLISH through the lease-holding node (0: skip)
IDLE_DURATION=${IDLE_DURATION:-10s}
HISTORY_SIZE=${HISTORY_SIZE:-100}      # the gateways' --history-size
CAL_CONNS=${CAL_CONNS:-10000}          # connections of every run's calibration
CAL_PHASE=${CAL_PHASE:-2s}
RUN_TIMEOUT=${RUN_TIMEOUT:-420}        # seconds any one run may take
RUNS=${RUNS:-ceiling idle personal personal-burst broadcast rate durable plain-forwarded}  # which runs (always in this order)
BATCH=${BATCH:-25}                     # connections each client process opens at once (see above)
OUT_DIR=${OUT_DIR:-docs/bench}
PLOT=${PLOT:-1}
for tool in go redis-server redis-cli curl jq; do
  command -v "$tool" >/dev/null || { echo "bench-cluster.sh needs $tool" >&2; exit 1; }
done
WS=${WS:-bin/wspubsub}
mkdir -p "$(dirname "$WS")"
go build -o "$WS" ./cmd/wspubsub
START=$(date +%s)

. scripts/bench-lib.sh
TMP=$(mktemp -d)
KEYS=$TMP/keys
LINES=$TMP/lines
: > "$KEYS"
RPIDS=() RPORTS=() GPIDS=() TARGETS=() USED=()
stop_gateways() {
  local p
  for p in "${GPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${GPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  # The forwarding lease of plain PUBLISHes outlives its holder by up to
  # 6 s: gone with it, so that the next gateways take it at once.
  if [ ${#GPIDS[@]} -gt 0 ]; then redis-cli -c -p "${RPORTS[0]}" del 'wspubsub:lease:{bench_ch}' >/dev/null; fi
  GPIDS=() TARGETS=()
}
cleanup() {
  stop_gateways
  local p
  for p in "${RPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${RPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

port() { # PORT: a free port not handed out before in this run (freeport only checks that nothing listens yet)
  while :; do
    PORT=$(freeport)
    [[ " ${USED[*]} " == *" $PORT "* ]] || { USED+=("$PORT"); return; }
  done
}
join() { local IFS=,; echo "$*"; }

# The cluster: SHARDS masters, the slots spread by redis-cli, healthy on
# every node before anything starts.
for i in $(seq "$SHARDS"); do
  port; p=$PORT
  port; bus=$PORT
  mkdir -p "$TMP/redis-$p"
  redis-server --port "$p" --cluster-port "$bus" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file "$TMP/redis-$p/nodes.conf" --cluster-node-timeout 2000 --dir "$TMP/redis-$p" \
    --save "" --appendonly no --daemonize no --loglevel warning --logfile "$TMP/redis-$p/log" &
  RPIDS+=($!) RPORTS+=("$p")
done
for p in "${RPORTS[@]}"; do
  for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${RPORTS[@]}") --cluster-yes >/dev/null
for p in "${RPORTS[@]}"; do
  for _ in $(seq 150); do
    redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && break
    sleep 0.2
  done
  redis-cli -p "$p" cluster info | grep -q '^cluster_state:ok' || { echo "redis cluster not ok on $p" >&2; exit 1; }
done
SEEDS=$(join $(printf 'redis://127.0.0.1:%s ' "${RPORTS[@]}"))
echo "== redis cluster: $SEEDS (pids $(join "${RPIDS[@]}"))" >&2

start_gateways() { # NODES fresh gateways on free ports, ready
  stop_gateways
  local i p
  for i in $(seq "$NODES"); do
    port; p=$PORT
    $WS --listen "127.0.0.1:$p" --routing keys --redis-cluster --redis-url "$SEEDS" --channel bench_ch \
      --keys-file "$KEYS" --node-id "gw$i" --max-sessions-per-addr 0 --log-level warn --drain-period 0 \
      --history-size "$HISTORY_SIZE" >&2 &
    GPIDS+=($!) TARGETS+=("http://127.0.0.1:$p")
  done
  for t in "${TARGETS[@]}"; do
    for _ in $(seq 100); do curl -fs "$t/readyz" >/dev/null 2>&1 && continue 2; sleep 0.1; done
    echo "gateway $t not ready" >&2
    exit 1
  done
}

label() { # label <name>: the JSON line (last line of stdin) with its label and the load average at its end
  tail -1 | jq -c --arg name "$1" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" '{"label": $name, "loadavg": $load} + .'
}

bench() { # bench <label> [flags]: one calibrated run over fresh gateways
  local name=$1 out; shift
  echo "== $name (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  start_gateways
  out=$(timeout "$RUN_TIMEOUT" $WS bench --target "$(join "${TARGETS[@]}")" --gateway-pid "$(join "${GPIDS[@]}")" \
    --redis-cluster --redis-url "$SEEDS" --redis-pids "$(join "${RPIDS[@]}")" --channel bench_ch \
    --keys file --keys-file "$KEYS" --per-proc "$PER_PROC" --batch "$BATCH" \
    --calibrate --calibrate-conns "$CAL_CONNS" --calibrate-phase "$CAL_PHASE" --conns "$CONNS" "$@")
  printf '%s\n' "$out" | sed '$d' >&2
  printf '%s\n' "$out" | label "$name" | tee -a "$LINES"
}

run() { [[ " $RUNS " == *" $1 "* ]]; }
if run ceiling; then
  echo "== ceiling" >&2
  out=$(timeout "$RUN_TIMEOUT" $WS bench --scenario ceiling --conns "$CAL_CONNS" --calibrate-phase "$CAL_PHASE")
  printf '%s\n' "$out" | sed '$d' >&2
  printf '%s\n' "$out" | label ceiling | tee -a "$LINES"
fi
if run idle; then bench idle --scenario idle --duration "$IDLE_DURATION"; fi
if run personal; then bench personal --scenario personal --messages "$MESSAGES"; fi
if run personal-burst; then bench personal-burst --scenario personal --messages "$BURST" --window 0; fi
if run broadcast; then bench broadcast --scenario broadcast --messages "$BROADCAST_MESSAGES"; fi
if run rate; then bench rate --scenario rate --rate "$RATE" --duration "$RATE_DURATION"; fi
if run durable; then bench durable --scenario personal --messages "$DURABLE_MESSAGES" --durable; fi
if run plain-forwarded && [ "$PLAIN_MESSAGES" != 0 ]; then
  bench plain-forwarded --scenario personal --messages "$PLAIN_MESSAGES" --routing all
fi
stop_gateways
ELAPSED=$(($(date +%s) - START))

# The table: one row per run. Per node: its connections, RSS at the end,
# CPU while publishing (first publish → last delivery), as min–max over the
# nodes; gateway CPU per delivery over all nodes; each Redis master's CPU
# while publishing (/proc) and Redis commands per published message (INFO,
# over all masters: the gateways' own presence and probe commands included).
DATE=$(date -u '+%F %H:%M UTC')
echo
echo "$NODES gateways, $SHARDS-master Redis Cluster, $CONNS connections, $DATE, $ELAPSED s in all"
echo
echo "| run | figure | lost | p50 / p99 ms | ratio to ceiling | per node: connections; RSS MB; CPU s publishing | gateway CPU per delivery | Redis CPU per master, publishing (s) | Redis commands per message | load avg |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
jq -r '
  def n: floor | tostring;
  def f(d): (. * pow(10; d) | round / pow(10; d) | tostring);
  def span(g; d): [.nodes[] | g] | if length == 0 then "—" else "\(min | f(d))–\(max | f(d))" end;
  . as $r | (.ceiling // {}) as $c
  | if .label == "ceiling" then
      "| ceiling | \($c.one_per_write_per_s | n) frames/s at one per write, \($c.sixteen_per_write_per_s | n)/s at 16 per write (\($c.conns) conns) | — | — | 1× | — | — | — | — | \(.loadavg) |"
    else
      (if .scenario == "idle" then "\(.gateway_bytes_per_conn // 0 | n) B per connection (\(.connected) connected at \(.connects_per_s | n)/s)"
       elif .scenario == "broadcast" then "\(.delivered_per_s | n) deliveries/s (\(.published) broadcasts × \(.connected))"
       elif .scenario == "rate" then "\(.published / .publish_s | n) msg/s offered, \(.delivered_per_s | n)/s delivered"
       else "\(.delivered_per_s | n) msg/s (\(.published) messages)" end)
      as $f | ($f + (if (.reconnects_after_1013 // 0) > 0 then "; \(.reconnects_after_1013) reconnects after 1013" else "" end)) as $figure
      | ([.nodes[].cpu_publish_s] | add) as $gcpu
      | ([.nodes[].deliveries] | add) as $dl
      | "| \(.label) | \($figure) | \(.lost) | \(if .latency.samples > 0 then "\(.latency.p50_ms) / \(.latency.p99_ms)" else "—" end) | \(if .ratio_to_ceiling and .scenario != "idle" then (.ratio_to_ceiling | f(2)) + "×" else "—" end)\(if .scenario == "rate" then " offered" else "" end) | \(span(.connections; 0)); \(span(.rss_after / 1e6; 1)); \(span(.cpu_publish_s; 2)) | \(if $dl > 0 then ($gcpu / $dl * 1e6 | f(2)) + " µs" else "—" end) | \([(.redis_procs // [])[].cpu_publish_s | f(2)] | join(" / ")) | \(if .published > 0 then ([(.redis_shards // [])[].commands] | add / $r.published | f(2)) else "—" end) | \(.loadavg) |"
    end
' "$LINES"

mkdir -p "$OUT_DIR"
cp "$LINES" "$OUT_DIR/cluster.jsonl"
if [ "$PLOT" = 1 ]; then
  OUT_ABS=$(cd "$OUT_DIR" && pwd)
  (cd tools/plot && go run . -cluster "$OUT_ABS/cluster.jsonl" -out "$OUT_ABS") >&2
fi
