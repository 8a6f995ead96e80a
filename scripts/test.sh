#!/usr/bin/env bash
# Runs every wspubsub test on this machine, installing and building what the
# tests need: redis-server and redis-cli (which makes the Redis Cluster of the cluster tests),
# chromium and gcc (for -race) (Debian packages), the FerretDB-based
# MongoDB-wire helper (tools/mongowire, from the Go module proxy) and
# jQuery 1.9.1 for the 2014-page test (npm registry). The tests start their
# own servers on free loopback ports and stop them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

if ! command -v go >/dev/null; then
  echo "Go is required (https://go.dev/dl/); it was not found on PATH" >&2
  exit 1
fi

# snap_shim PATH: is this browser a snap, or Ubuntu's shim that asks for
# one? A snap's private /tmp and confinement break the browser tests.
snap_shim() {
  local real
  real=$(readlink -f "$1")
  case "$real" in /snap/* | */bin/snap) return 0 ;; esac
  [ "$(head -c 2 "$real" 2>/dev/null)" = "#!" ] && grep -qE "/snap/|chromium snap" "$real"
}

# The browser tests run $CHROMIUM, else chromium from PATH. On Ubuntu the
# chromium package is a snap (`apt-get install chromium` fails or installs
# a shim): find a real one or say what to install, before apt-get.
ubuntu=""
if [ -r /etc/os-release ]; then
  ubuntu=$(. /etc/os-release; case " ${ID:-} ${ID_LIKE:-} " in *" ubuntu "*) echo yes ;; esac)
fi
if [ -n "${CHROMIUM:-}" ]; then
  if [ ! -x "$CHROMIUM" ]; then echo "CHROMIUM=$CHROMIUM is not an executable file" >&2; exit 1; fi
elif [ -n "$ubuntu" ]; then
  for b in chromium google-chrome-stable google-chrome chromium-browser; do
    p=$(command -v "$b" || true)
    if [ -n "$p" ] && ! snap_shim "$p"; then export CHROMIUM="$p"; break; fi
  done
  if [ -z "${CHROMIUM:-}" ]; then
    cat >&2 <<'MSG'
The browser tests need Chromium or Google Chrome, and on Ubuntu the chromium
package is a snap: `apt-get install chromium` fails or installs a shim that asks
for snap, and a snap's private /tmp breaks the tests. Install instead:

  Google Chrome's .deb (amd64):
    wget https://dl.google.com/linux/direct/google-chrome-stable_current_amd64.deb
    sudo apt-get install -y ./google-chrome-stable_current_amd64.deb

  or any Chromium that is not a snap (e.g. Debian's chromium package),

then run ./scripts/test.sh again: google-chrome on PATH is found, or point
CHROMIUM=/path/to/browser at the browser to use.
MSG
    exit 1
  fi
fi

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
[ -n "${CHROMIUM:-}" ] || command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
# go test -race needs cgo, hence a C compiler.
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
redis-server --version
# Per-key routing and the Redis Cluster tests use sharded pub/sub (Redis 7).
redis_major=$(redis-server --version | sed -n 's/.*v=\([0-9]*\)\..*/\1/p')
if [ "${redis_major:-0}" -lt 7 ]; then
  echo "redis-server 7 or later is needed (sharded pub/sub); this one is $(redis-server --version)" >&2
  exit 1
fi
"${CHROMIUM:-chromium}" --version 2>/dev/null || true
node --version

BIN="${WSPUBSUB_BIN_DIR:-$PWD/bin}"
mkdir -p "$BIN"
step "building the MongoDB-wire test server (FerretDB, tools/mongowire)"
(cd tools/mongowire && go build -o "$BIN/mongowire" .)
export WSPUBSUB_MONGOWIRE="$BIN/mongowire"

if [ ! -f "$BIN/jquery-1.9.1/package/jquery.js" ]; then
  step "fetching jQuery 1.9.1 (npm) for the 2014 bullet page test"
  mkdir -p "$BIN/jquery-1.9.1"
  (cd "$BIN/jquery-1.9.1" && npm pack --silent jquery@1.9.1 >/dev/null && tar xzf jquery-1.9.1.tgz)
fi
export WSPUBSUB_JQUERY="$BIN/jquery-1.9.1/package/jquery.js"
export WSPUBSUB_ARTIFACTS="${WSPUBSUB_ARTIFACTS:-$PWD/artifacts}"
export WSPUBSUB_REQUIRE_SERVICES=1

step "gofmt and go vet"
unformatted=$(gofmt -l cmd internal e2e tools)
if [ -n "$unformatted" ]; then echo "gofmt needed: $unformatted" >&2; exit 1; fi
go vet ./...

step "JS client tests (node --test)"
node --test internal/web/static/

step "unit, integration, end-to-end and browser tests (race detector on; screenshots in $WSPUBSUB_ARTIFACTS)"
go test -race -count=1 -timeout 20m ./...

step "fuzzing the envelope parser briefly"
go test -run '^$' -fuzz '^FuzzParse$' -fuzztime "${WSPUBSUB_FUZZTIME:-15s}" ./internal/envelope

step "fuzzing the WebSocket reader briefly"
go test -run '^$' -fuzz '^FuzzReader$' -fuzztime "${WSPUBSUB_FUZZTIME:-15s}" ./internal/websocket

step "fuzzing HTTP requests into the client path briefly"
# The gateway's own goroutines make coverage noisy: without a short
# minimize time the run is spent minimizing inputs instead of fuzzing.
go test -run '^$' -fuzz '^FuzzClientHTTP$' -fuzztime "${WSPUBSUB_FUZZTIME:-15s}" -fuzzminimizetime 2s ./internal/gateway

step "benchmarks compile and run once"
go test -run '^$' -bench . -benchtime 1x ./...

step "all tests passed"
