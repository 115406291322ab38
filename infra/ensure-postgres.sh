#!/usr/bin/env bash
# Makes sure the PostgreSQL server the store's tests use answers at the given URL; starts the machine's cluster if
# it is installed but stopped. Exits non-zero with a message when no server can be reached.
set -euo pipefail
url="${1:-postgresql://postgres@127.0.0.1:5432/test}"
if ! command -v pg_isready >/dev/null 2>&1; then
  echo "ensure-postgres: pg_isready not found; the PostgreSQL tests will use $url as it is" >&2
  exit 0
fi
if pg_isready -q -d "$url"; then exit 0; fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  for version in $(ls /etc/postgresql); do
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  done
fi
for _ in $(seq 1 30); do
  pg_isready -q -d "$url" && exit 0
  sleep 1
done
echo "ensure-postgres: no PostgreSQL server answers at $url" >&2
exit 1
