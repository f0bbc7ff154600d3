#!/usr/bin/env bash
# Installs the Python Kafka client the interoperability tests use (a client that is not weir's
# own librdkafka build): confluent-kafka from PyPI, in a virtualenv at .venv/. Idempotent;
# prints the interpreter's path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
version="2.12.1"
if ! [ -x "$venv/bin/python" ] ||
    ! "$venv/bin/python" -c "import confluent_kafka, sys; sys.exit(confluent_kafka.version()[0] != '$version')" 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "confluent-kafka==$version" >&2
fi
echo "$venv/bin/python"
