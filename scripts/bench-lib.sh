# Shared by the bench scripts (sourced): a free loopback port, and a
# throw-away redis-server on one.

freeport() { # a port nothing listens on, below Linux's ephemeral range
  local p          # (a load tool's thousands of client sockets take ports there)
  while :; do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
}

# start_redis starts redis-server without persistence on a free port and
# waits for it: sets RPORT, REDIS (its URL) and RPID (to kill on exit).
start_redis() {
  RPORT=$(freeport)
  REDIS="redis://127.0.0.1:$RPORT"
  redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize no --loglevel warning >&2 &
  RPID=$!
  for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
}
