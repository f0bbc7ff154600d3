#!/usr/bin/env bash
# Installs and runs the real RabbitMQ test server: Debian's rabbitmq-server (3.10), as a plain
# process of this user with its own folders and ports, with the consistent-hash exchange and
# stream plugins.
#
#   scripts/rabbitmq.sh start    install if missing, start on 127.0.0.1:$RABBITMQ_PORT if not running
#   scripts/rabbitmq.sh stop     stop the server started here (by PID)
#   scripts/rabbitmq.sh status   say whether it runs
#
# Everything lives under .rabbitmq/ at the repository root; its database (.rabbitmq/mnesia/)
# is emptied at every start. It takes about 7 s to start: start it once per test run.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
name=rabbitmq-server
dir="$root/.rabbitmq"
port="${RABBITMQ_PORT:-15673}"

source "$root/scripts/server.sh"

# Debian's package, not a wheel: installed with apt-get (its service is not started).
install_server() {
  if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
    return
  fi
  say "installing Debian's rabbitmq-server"
  local as_root=""
  [ "$(id -u)" -eq 0 ] || as_root=sudo
  $as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq rabbitmq-server >/dev/null
  # A package that started its own service would hold the default ports; ours are its own.
  $as_root service rabbitmq-server stop >/dev/null 2>&1 || true
}

launch() {
  rm -rf "$dir/mnesia"
  mkdir -p "$dir/logs"
  echo '[rabbitmq_consistent_hash_exchange,rabbitmq_stream].' >"$dir/enabled_plugins"
  cat >"$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$port
stream.listeners.tcp.1 = 127.0.0.1:$((port + 1))
loopback_users = none
CONF
  # The Erlang cookie and the CLI's state stay in our folder too.
  env HOME="$dir" \
    RABBITMQ_NODENAME="weir-test@localhost" \
    RABBITMQ_DIST_PORT="$((port + 10000))" \
    RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" \
    RABBITMQ_LOG_BASE="$dir/logs" \
    RABBITMQ_PID_FILE="$dir/beam.pid" \
    nohup /usr/lib/rabbitmq/bin/rabbitmq-server >"$log" 2>&1 &
}

serve "$@"
