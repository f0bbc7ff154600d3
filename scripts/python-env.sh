#!/usr/bin/env bash
# Installs the Python clients the interoperability tests use (clients that are not weir's own):
# confluent-kafka, nats-py, pika and boto3 from PyPI, in a virtualenv at .venv/, with moto's
# SQS server (scripts/sqs.sh runs it). Idempotent; prints the interpreter's path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
kafka="2.12.1"
nats="2.12.0"
pika="1.4.4"
boto3="1.44.18"
moto="5.2.6"
# moto's server needs Flask; `moto[server]` would also bring every other service's
# dependencies (cfn-lint, docker, ...): 54 s to install in CI against 18 s.
flask="3.1.3"
flask_cors="6.0.5"
if ! [ -x "$venv/bin/python" ] ||
    ! "$venv/bin/python" -c "
import sys, importlib.metadata as m, confluent_kafka
sys.exit(confluent_kafka.version()[0] != '$kafka' or m.version('nats-py') != '$nats'
         or m.version('pika') != '$pika' or m.version('boto3') != '$boto3'
         or m.version('moto') != '$moto' or m.version('flask') != '$flask'
         or m.version('flask-cors') != '$flask_cors')" 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "confluent-kafka==$kafka" "nats-py==$nats" "pika==$pika" "boto3==$boto3" \
        "moto==$moto" "flask==$flask" "flask-cors==$flask_cors" >&2
fi
echo "$venv/bin/python"
