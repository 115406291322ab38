#!/usr/bin/env bash
# The local stack without Docker: a Prefect server and an S3 server (moto), both on loopback, both in the
# background with their pid and log under .engram/.  `make up` / `make down` call this.
#
#   infra/local-stack.sh up       start both (a no-op for what already runs); prints the environment to use
#   infra/local-stack.sh down     stop both
#   infra/local-stack.sh status   say what runs
#   infra/local-stack.sh env      print the environment (source it: eval "$(infra/local-stack.sh env)")
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${ENGRAM_STACK_DIR:-$ROOT/.engram}"
BIN="${BIN:-$ROOT/.venv/bin}"
PREFECT_PORT="${PREFECT_PORT:-4200}"
S3_PORT="${S3_PORT:-9000}"
BUCKET="${ENGRAM_BUCKET:-engram-archive}"

running() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

env_lines() {
  cat <<ENV
export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
export ENGRAM_ARCHIVE_URL=s3://$BUCKET/engram
export ENGRAM_ARCHIVE_ENDPOINT=http://127.0.0.1:$S3_PORT
export ENGRAM_ARCHIVE_REGION=us-east-1
export ENGRAM_ARCHIVE_ACCESS_KEY=testing
export ENGRAM_ARCHIVE_SECRET_KEY=testing
export ENGRAM_HOME=$ROOT
ENV
}

wait_for() {  # url, name
  for _ in $(seq 1 180); do
    if "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null; then
      return 0
    fi
    sleep 1
  done
  echo "local-stack: $2 did not answer at $1; see $STATE/$2.log" >&2
  return 1
}

up() {
  mkdir -p "$STATE/prefect-home"
  if running prefect; then
    echo "prefect server already runs (pid $(cat "$STATE/prefect.pid"))"
  else
    PREFECT_HOME="$STATE/prefect-home" PREFECT_SERVER_ANALYTICS_ENABLED=false \
      nohup "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT" >"$STATE/prefect.log" 2>&1 &
    echo $! >"$STATE/prefect.pid"
  fi
  if running s3; then
    echo "S3 server already runs (pid $(cat "$STATE/s3.pid"))"
  else
    nohup "$BIN/python" -m moto.server -H 127.0.0.1 -p "$S3_PORT" >"$STATE/s3.log" 2>&1 &
    echo $! >"$STATE/s3.pid"
  fi
  wait_for "http://127.0.0.1:$PREFECT_PORT/api/health" prefect
  wait_for "http://127.0.0.1:$S3_PORT/moto-api/" s3
  env_lines >"$STATE/env"
  echo "Prefect UI:  http://127.0.0.1:$PREFECT_PORT"
  echo "S3 endpoint: http://127.0.0.1:$S3_PORT (bucket $BUCKET is created by the provision flow)"
  echo "Environment: source $STATE/env"
}

down() {
  for name in prefect s3; do
    if running "$name"; then
      pid="$(cat "$STATE/$name.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
      echo "stopped $name (pid $pid)"
    fi
    rm -f "$STATE/$name.pid"
  done
}

status() {
  for name in prefect s3; do
    if running "$name"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; fi
  done
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
