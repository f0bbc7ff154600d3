#!/usr/bin/env bash
# Runs the SQS test endpoint: moto's server (PyPI moto with Flask, pinned in python-env.sh), which
# speaks SQS's API on 127.0.0.1:$SQS_PORT with any credentials. It runs through sqs-server.py,
# which answers one request at a time: moto's model is not thread-safe, and its threaded server
# lost messages and deletes under concurrent requests.
#
#   scripts/sqs.sh start    install if missing, start if not running
#   scripts/sqs.sh stop     stop the server started here (by PID)
#   scripts/sqs.sh status   say whether it runs
#
# moto keeps its queues in memory: every start is empty. Its known faults (tests must not
# build around them as if SQS behaved that way): after a visibility timeout a FIFO group
# redelivers only its last message; sequence numbers are random; a duplicate send returns a
# new id.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
name=moto_server
dir="$root/.sqs"
port="${SQS_PORT:-14566}"

source "$root/scripts/server.sh"

# From the project's Python environment, not a wheel of its own.
install_server() {
  local python
  python=$("$root/scripts/python-env.sh")
  bin="$python"
}

launch() {
  nohup "$bin" "$root/scripts/sqs-server.py" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
}

serve "$@"
