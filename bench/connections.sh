#!/usr/bin/env bash
# keygate's memory with 10,000 open client connections (release build), in
# three cases, each on a fresh keygate:
#
#   keep-alive  10,000 HTTP/1.1 connections, each after one request answered
#               by an nginx `return 200` upstream, now idle;
#   shed        10,000 connections, each with one request to an upstream that
#               never answers, at the default max-concurrent-requests (4096):
#               4,096 wait for the upstream, the rest get 503 at once;
#   unbounded   the same with max-concurrent-requests raised to 20000: all
#               10,000 requests wait (what the bound saves).
#
# RSS is read from /proc/PID/status (VmRSS, and the peak VmHWM) once every
# connection is open and every request sent. Routes are white-listed, so no
# provider is needed: the figures are the connections' and requests' cost.
#
#   ./bench/connections.sh                 # CONNECTIONS=10000
#   SKIP_BUILD=1 CONNECTIONS=2000 ./bench/connections.sh
#
# Not part of the test suite. Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
export PATH="$PATH:/usr/sbin:/sbin"

CONNECTIONS=${CONNECTIONS:-10000}
CASES=${CASES:-"keep-alive shed unbounded"}
for c in nginx python3 curl; do command -v $c >/dev/null 2>&1 || die "$c not found"; done
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p keygate
KEYGATE=$ROOT/target/release/keygate
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $(( CONNECTIONS + 200 )) ] || die "open-file limit $(ulimit -n) is too low for $CONNECTIONS connections"

WORK=$(mktemp -d /tmp/keygate-conns.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# The upstreams: nginx answering 200, and a listener that reads requests and
# never answers.
UP_PORT=$(free_port); HANG_PORT=$(free_port)
mkdir -p "$WORK/up"
{
  nginx_common "$WORK/up" 1
  echo "http {"
  nginx_http_common "$WORK/up"
  echo "  server { listen 127.0.0.1:$UP_PORT; location / { return 200 'ok'; } }"
  echo "}"
} > "$WORK/up/nginx.conf"
setsid nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" > "$WORK/up.log" 2>&1 &
PIDS+=($!)
cat > "$WORK/hang.py" <<'EOF'
import asyncio, resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def hold(reader, writer):
    await reader.read()  # until keygate gives up; never answer
async def main():
    server = await asyncio.start_server(hold, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    print("HANG READY", flush=True)
    await server.serve_forever()
asyncio.run(main())
EOF
setsid python3 "$WORK/hang.py" "$HANG_PORT" > "$WORK/hang.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q "HANG READY" "$WORK/hang.log" && break; sleep 0.1; done

rss() { awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {printf "%.1f %.1f", r/1024, h/1024}' "/proc/$1/status"; }

echo "| case | connections | requests answered at once | requests waiting | keygate RSS (MiB) | peak RSS (MiB) |"
echo "|---|---:|---|---:|---:|---:|"
run() {  # run NAME UPSTREAM_PORT MAX_CONCURRENT MODE
  local name=$1 port=$2 max=$3 mode=$4 kg_port kg_pid hold_pid line base
  kg_port=$(free_port)
  cat > "$WORK/keygate.yaml" <<EOF
listen: 127.0.0.1:$kg_port
discovery-url: http://127.0.0.1:1/realms/none
client-id: keygate
upstream-url: http://127.0.0.1:$port
log-level: ${LOG_LEVEL:-error}
server-read-header-timeout: 10m
server-idle-timeout: 10m
upstream-response-header-timeout: 10m
max-connections: 20000
max-concurrent-requests: $max
shutdown-grace-period: 1s
resources:
  - uri: /*
    white-listed: true
EOF
  setsid "$KEYGATE" serve --config "$WORK/keygate.yaml" > "$WORK/keygate.log" 2>&1 &
  kg_pid=$!
  for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$kg_port/oauth/health" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sS -m 2 -o /dev/null "http://127.0.0.1:$kg_port/warm-up" 2>/dev/null || true
  base=$(rss "$kg_pid")
  : > "$WORK/conns.out"
  python3 bench/conns.py 127.0.0.1 "$kg_port" "$CONNECTIONS" /bench "$mode" > "$WORK/conns.out" 2>&1 &
  hold_pid=$!
  for _ in $(seq 1200); do grep -q "HOLDING" "$WORK/conns.out" && break; sleep 0.1; done
  line=$(grep "HOLDING" "$WORK/conns.out") || die "$name: the client did not finish: $(tail -3 "$WORK/conns.out")"
  sleep 2
  read -r r h <<<"$(rss "$kg_pid")"
  local open answered pending
  open=$(awk '{print $2}' <<<"$line")
  answered=$(awk '{for (i=3; i<NF; i++) printf "%s ", $i}' <<<"$line")
  pending=$(awk '{sub("pending=", "", $NF); print $NF}' <<<"$line")
  echo "| $name (max-concurrent-requests $max; idle RSS before: ${base% *} MiB) | $open | ${answered:-none} | $pending | $r | $h |"
  kill "$hold_pid" 2>/dev/null || true; wait "$hold_pid" 2>/dev/null || true
  kill -TERM "$kg_pid" 2>/dev/null || true; wait "$kg_pid" 2>/dev/null || true
  [ -z "${KEEP_LOG:-}" ] || cp "$WORK/keygate.log" "$KEEP_LOG.$name"
}
for case in $CASES; do
  case $case in
    keep-alive) run keep-alive "$UP_PORT" 4096 answered ;;
    shed) run shed "$HANG_PORT" 4096 sent ;;
    unbounded) run unbounded "$HANG_PORT" 20000 sent ;;
    *) die "unknown case $case" ;;
  esac
done
