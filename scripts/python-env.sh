#!/usr/bin/env bash
# Installs the Python clients the interoperability tests use (clients that are not weir's own):
# confluent-kafka, nats-py and pika from PyPI, in a virtualenv at .venv/. Idempotent; prints the
# interpreter's path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
kafka="2.12.1"
nats="2.12.0"
pika="1.4.4"
if ! [ -x "$venv/bin/python" ] ||
    ! "$venv/bin/python" -c "
import sys, importlib.metadata as m, confluent_kafka
sys.exit(confluent_kafka.version()[0] != '$kafka' or m.version('nats-py') != '$nats'
         or m.version('pika') != '$pika')" 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "confluent-kafka==$kafka" "nats-py==$nats" "pika==$pika" >&2
fi
echo "$venv/bin/python"
