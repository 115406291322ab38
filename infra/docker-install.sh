#!/bin/sh
# Installs engram into the shared /opt/venv volume once; every engram container of docker-compose.yml runs this first.
set -eu
if [ ! -x /opt/venv/bin/prefect ] || [ ! -f /opt/venv/.engram-installed ]; then
  python -m venv /opt/venv
  /opt/venv/bin/pip install --quiet -e /opt/engram
  touch /opt/venv/.engram-installed
fi
