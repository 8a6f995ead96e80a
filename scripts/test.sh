#!/usr/bin/env bash
# Runs every wspubsub test on this machine, installing and building what the
# tests need: redis-server (Debian package) and the FerretDB-based
# MongoDB-wire helper (tools/mongowire, from the Go module proxy). The tests
# start their own servers on free loopback ports and stop them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

if ! command -v go >/dev/null; then
  echo "Go is required (https://go.dev/dl/); it was not found on PATH" >&2
  exit 1
fi

if ! command -v redis-server >/dev/null; then
  step "installing redis-server"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

BIN="${WSPUBSUB_BIN_DIR:-$PWD/bin}"
mkdir -p "$BIN"
step "building the MongoDB-wire test server (FerretDB, tools/mongowire)"
(cd tools/mongowire && go build -o "$BIN/mongowire" .)
export WSPUBSUB_MONGOWIRE="$BIN/mongowire"
export WSPUBSUB_REQUIRE_SERVICES=1

step "gofmt and go vet"
unformatted=$(gofmt -l cmd internal e2e tools)
if [ -n "$unformatted" ]; then echo "gofmt needed: $unformatted" >&2; exit 1; fi
go vet ./...

step "unit, integration and end-to-end tests (race detector on)"
go test -race -count=1 -timeout 20m ./...

step "fuzzing the envelope parser briefly"
go test -run '^$' -fuzz '^FuzzParse$' -fuzztime "${WSPUBSUB_FUZZTIME:-15s}" ./internal/envelope

step "benchmarks compile and run once"
go test -run '^$' -bench . -benchtime 1x ./...

step "all tests passed"
